//! The child side of the facts query: makes the Level Zero calls in this process and
//! prints what it learns (see [`protocol`](super::protocol)).

use level_zero_sys::types::{self as ze, DeviceHandle};
use level_zero_sys::{Initialized, LoadError, Loader, ZeResult};

use super::protocol::{exit_now, json, step, DONE, FACTS};
use super::{codes, LevelZeroDevice, LevelZeroDriver, LevelZeroError, LevelZeroFacts, LOADER_ENV};

pub(super) fn open_loader() -> Result<Loader, LoadError> {
    match std::env::var_os(LOADER_ENV).filter(|p| !p.is_empty()) {
        Some(path) => Loader::open_path(std::path::Path::new(&path)),
        None => Loader::open(),
    }
}

/// Card-level devices, with tiles as sub-devices: one Level Zero device per PCI
/// function, as in `pci[]` and `gpus[]`. Newer drivers default to `FLAT` (each tile a
/// device); a user's own setting is kept.
pub(super) fn prefer_composite_devices() {
    if std::env::var_os("ZE_FLAT_DEVICE_HIERARCHY").is_none() {
        std::env::set_var("ZE_FLAT_DEVICE_HIERARCHY", "COMPOSITE");
    }
}

/// Child entry point for `facts`.
pub(super) fn child_facts() -> ! {
    prefer_composite_devices();
    let facts = collect_facts();
    // Nothing more to do whether or not the parent still listens.
    let _ = json(DONE, &facts);
    exit_now(0)
}

fn collect_facts() -> LevelZeroFacts {
    let mut facts = LevelZeroFacts::default();
    let loader = match open_loader() {
        Ok(loader) => loader,
        // A host without Level Zero: a normal outcome, not an error.
        Err(LoadError::NotFound { .. }) => return facts,
        Err(e @ LoadError::MissingSymbol { .. }) => {
            facts.error = Some(LevelZeroError {
                code: codes::LOADER_INVALID,
                name: "XPU_LEVEL_ZERO_LOADER_INVALID".into(),
                meaning: format!("{e}; reinstall the Level Zero loader (Debian: libze1)"),
            });
            return facts;
        }
    };
    facts.loader_found = true;
    facts.loader_version = loader.file_version();
    json(FACTS, &facts);

    step("zeInit");
    let l0 = match loader.init(ze::INIT_FLAG_GPU_ONLY) {
        Ok(l0) => l0,
        Err(result) => {
            // No further call: loader 1.8.12 crashes after a failed zeInit.
            facts.error = Some(LevelZeroError::from_result(result, "zeInit"));
            return facts;
        }
    };

    step("zelLoaderGetVersions");
    if let Some(Ok(components)) = l0.loader_versions() {
        if let Some(loader) = components
            .iter()
            .find(|c| ze::c_chars_to_string(&c.component_name) == "loader")
        {
            let v = loader.component_lib_version;
            facts.loader_version = Some(format!("{}.{}.{}", v.major, v.minor, v.patch));
        }
    }
    json(FACTS, &facts);

    step("zeDriverGet");
    let drivers = match l0.drivers() {
        Ok(drivers) => drivers,
        Err(result) => {
            facts.error = Some(LevelZeroError::from_result(result, "zeDriverGet"));
            return facts;
        }
    };
    for driver in drivers {
        let mut entry = LevelZeroDriver::default();
        step("zeDriverGetProperties");
        match l0.driver_properties(driver) {
            Ok(props) => entry.version = driver_version(props.driver_version),
            Err(result) => note(&mut facts.error, result, "zeDriverGetProperties"),
        }
        step("zeDriverGetApiVersion");
        match l0.driver_api_version(driver) {
            Ok(version) => entry.api_version = ze::format_api_version(version),
            Err(result) => note(&mut facts.error, result, "zeDriverGetApiVersion"),
        }
        facts.drivers.push(entry);
        json(FACTS, &facts);

        step("zeDeviceGet");
        let devices = match l0.devices(driver) {
            Ok(devices) => devices,
            Err(result) => {
                note(&mut facts.error, result, "zeDeviceGet");
                continue;
            }
        };
        for device in devices {
            match describe(&l0, device) {
                Ok(d) => facts
                    .drivers
                    .last_mut()
                    .expect("pushed above")
                    .devices
                    .push(d),
                Err((result, call)) => note(&mut facts.error, result, call),
            }
            json(FACTS, &facts);
        }
    }
    facts
}

/// Keeps the first error: later ones are usually consequences of it.
fn note(error: &mut Option<LevelZeroError>, result: ZeResult, call: &str) {
    if error.is_none() {
        *error = Some(LevelZeroError::from_result(result, call));
    }
}

/// "DDDD:BB:DD.F", as sysfs writes PCI addresses.
pub(super) fn format_pci_address(a: ze::PciAddress) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        a.domain, a.bus, a.device, a.function
    )
}

/// `driverVersion` → "major.minor.build" (compute-runtime: 0x01030000 + build).
pub(super) fn driver_version(raw: u32) -> String {
    format!("{}.{}.{}", raw >> 24, (raw >> 16) & 0xff, raw & 0xffff)
}

fn device_type(raw: u32) -> String {
    match raw {
        ze::DEVICE_TYPE_GPU => "gpu".into(),
        ze::DEVICE_TYPE_CPU => "cpu".into(),
        ze::DEVICE_TYPE_FPGA => "fpga".into(),
        ze::DEVICE_TYPE_MCA => "mca".into(),
        ze::DEVICE_TYPE_VPU => "vpu".into(),
        other => format!("unknown({other})"),
    }
}

fn describe(
    l0: &Initialized<'_>,
    device: DeviceHandle,
) -> Result<LevelZeroDevice, (ZeResult, &'static str)> {
    step("zeDeviceGetProperties");
    let p = l0
        .device_properties(device)
        .map_err(|r| (r, "zeDeviceGetProperties"))?;
    step("zeDeviceGetComputeProperties");
    let compute = l0
        .compute_properties(device)
        .map_err(|r| (r, "zeDeviceGetComputeProperties"))?;
    step("zeDeviceGetMemoryProperties");
    let memory = l0
        .memory_properties(device)
        .map_err(|r| (r, "zeDeviceGetMemoryProperties"))?;
    step("zeDeviceGetSubDevices");
    let sub_devices = l0
        .sub_devices(device)
        .map_err(|r| (r, "zeDeviceGetSubDevices"))?;
    step("zeDevicePciGetPropertiesExt");
    // An optional extension: older drivers lack it, so a failure is not an error.
    let pci_address = match l0.pci_properties(device) {
        Some(Ok(pci)) => Some(format_pci_address(pci.address)),
        _ => None,
    };
    let sizes = compute
        .num_sub_group_sizes
        .min(ze::SUBGROUPSIZE_COUNT as u32) as usize;
    Ok(LevelZeroDevice {
        name: ze::c_chars_to_string(&p.name),
        uuid: p.uuid.iter().map(|b| format!("{b:02x}")).collect(),
        r#type: device_type(p.device_type),
        vendor_id: format!("{:04x}", p.vendor_id),
        device_id: format!("{:04x}", p.device_id),
        pci_address,
        integrated: p.flags & ze::DEVICE_PROPERTY_FLAG_INTEGRATED != 0,
        sub_device: p.flags & ze::DEVICE_PROPERTY_FLAG_SUBDEVICE != 0,
        eu_count: u64::from(p.num_slices)
            * u64::from(p.num_subslices_per_slice)
            * u64::from(p.num_eus_per_subslice),
        threads_per_eu: p.num_threads_per_eu,
        eu_simd_width: p.physical_eu_simd_width,
        core_clock_mhz: p.core_clock_rate,
        memory_bytes: memory
            .iter()
            .map(|m| m.total_size)
            .fold(0u64, u64::saturating_add),
        max_alloc_bytes: p.max_mem_alloc_size,
        max_group_size: compute.max_total_group_size,
        shared_local_memory_bytes: compute.max_shared_local_memory,
        sub_group_sizes: compute.sub_group_sizes[..sizes].to_vec(),
        sub_devices: sub_devices.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions_decode_like_compute_runtime() {
        assert_eq!(driver_version(0x0103_0000 + 24595), "1.3.24595");
        assert_eq!(driver_version(0x0103_002a), "1.3.42");
        assert_eq!(driver_version(0), "0.0.0");
    }

    #[test]
    fn device_types() {
        assert_eq!(device_type(1), "gpu");
        assert_eq!(device_type(5), "vpu");
        assert_eq!(device_type(9), "unknown(9)");
    }

    #[test]
    fn pci_addresses_look_like_sysfs() {
        let a = ze::PciAddress {
            domain: 0,
            bus: 0x4d,
            device: 2,
            function: 1,
        };
        assert_eq!(format_pci_address(a), "0000:4d:02.1");
    }
}
