//! A fake Level Zero driver for tests, loaded by the real loader through
//! `ZE_ENABLE_ALT_DRIVERS=/abs/path/libfake_ze_driver.so`.
//!
//! Loader 1.8.12 only accepts a driver that exports all 46 `*GetXxxProcAddrTable`
//! functions ([`level_zero_sys::ddi::REQUIRED_TABLE_GETTERS`]); most of them return
//! an untouched (zeroed) table, which the loader accepts. The tables we fill implement
//! the queries `xpu-probe` makes: drivers, devices, sub-devices, properties, memory,
//! PCI and the Sysman telemetry subset.
//!
//! Behaviour is configured with environment variables, read once at `zeInit`:
//! - `FAKE_ZE_DEVICES=0|1|2|3` (default 1): 0 = the driver initialises but has no
//!   device; 1 = an Arc A770; 2 = plus a Data Center GPU Max 1550 with two
//!   sub-devices; 3 = plus an integrated UHD 770.
//! - `FAKE_ZE_INIT_RESULT=<code>` (decimal or 0x-hex, default 0): what `zeInit` returns.
//! - `FAKE_ZE_CRASH_IN=<function>`: raise SIGSEGV when that entry point (e.g.
//!   `zeDeviceGetProperties`, `zeInit`) is called.
//! - `FAKE_ZE_HANG_IN=<function>`: sleep forever in that entry point.
//! - `FAKE_ZE_STDOUT=<text>`: print this line on stdout during `zeInit`, like a chatty
//!   driver would.
//! - `ZE_FLAT_DEVICE_HIERARCHY` (compute-runtime's own variable): unless it is
//!   `COMPOSITE`, `zeDeviceGet` lists a multi-tile card as its tiles, like
//!   compute-runtime's default `FLAT` mode.
//!
//! An invalid value makes `zeInit` print the problem on stderr and return
//! `ZE_RESULT_ERROR_INVALID_ARGUMENT`.
//!
//! A copy of the library named `libfake_ze_driver.<tag>.so` reads
//! `FAKE_ZE_<TAG>_<NAME>` before `FAKE_ZE_<NAME>` (tag uppercased), so that two
//! differently configured drivers can be loaded side by side.

#![allow(non_snake_case)] // exported names must be the C names

use std::ffi::c_void;
use std::sync::OnceLock;
use std::time::Instant;

use level_zero_sys::ddi;
use level_zero_sys::types::*;
use level_zero_sys::ZeResult;

const GIB: u64 = 1 << 30;

/// Configuration from the environment.
struct Config {
    devices: usize,
    init_result: ZeResult,
    crash_in: Option<String>,
    hang_in: Option<String>,
    stdout: Option<String>,
    /// `ZE_FLAT_DEVICE_HIERARCHY` is not `COMPOSITE`: multi-tile cards are listed as
    /// their tiles, as compute-runtime does by default since 2023.
    flat: bool,
}

fn parse_code(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let tag = own_tag();
        // A copy tagged `<tag>` reads `FAKE_ZE_<TAG>_X` before `FAKE_ZE_X`.
        let var = |name: &str| {
            let get = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
            let tagged = tag
                .as_ref()
                .and_then(|tag| get(&name.replacen("FAKE_ZE_", &format!("FAKE_ZE_{tag}_"), 1)));
            tagged.or_else(|| get(name))
        };
        let devices = match var("FAKE_ZE_DEVICES") {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n <= 3 => n,
                _ => return Err(format!("FAKE_ZE_DEVICES={v:?}: expected 0, 1, 2 or 3")),
            },
        };
        let init_result = match var("FAKE_ZE_INIT_RESULT") {
            None => ZeResult::SUCCESS,
            Some(v) => ZeResult(parse_code(&v).ok_or_else(|| {
                format!("FAKE_ZE_INIT_RESULT={v:?}: expected a decimal or 0x-hex code")
            })?),
        };
        Ok(Config {
            devices,
            init_result,
            crash_in: var("FAKE_ZE_CRASH_IN"),
            hang_in: var("FAKE_ZE_HANG_IN"),
            stdout: var("FAKE_ZE_STDOUT"),
            flat: var("ZE_FLAT_DEVICE_HIERARCHY").as_deref() != Some("COMPOSITE"),
        })
    }
}

/// The tag of this copy of the library: `libfake_ze_driver.<tag>.so` → `<TAG>`
/// (uppercased), so that tests can load two differently configured copies.
fn own_tag() -> Option<String> {
    // SAFETY: Dl_info is plain data; dladdr only writes into it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: the address is a function of this library.
    if unsafe { libc::dladdr(own_tag as *const libc::c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dladdr returns a NUL-terminated path owned by the dynamic linker.
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    let name = path.rsplit('/').next()?;
    let tag = name
        .strip_prefix("libfake_ze_driver.")?
        .strip_suffix(".so")?;
    (!tag.is_empty()).then(|| tag.to_ascii_uppercase())
}

fn config() -> &'static Result<Config, String> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(Config::from_env)
}

/// Called first by every entry point: crashes or hangs on request.
fn enter(function: &str) {
    let Ok(config) = config() else { return };
    if config.crash_in.as_deref() == Some(function) {
        // The Rust runtime's SIGSEGV handler (stack-overflow detection) ignores a
        // raised signal, so restore the default action first: then it kills the
        // process like a real driver's bad pointer would.
        // SAFETY: signal and raise take plain values and touch no memory of ours; the
        // crash they cause is the point.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    if config.hang_in.as_deref() == Some(function) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// One fake device, with the telemetry its Sysman handles return.
struct FakeDevice {
    properties: DeviceProperties,
    compute: DeviceComputeProperties,
    memory: Vec<DeviceMemoryProperties>,
    pci: PciAddress,
    sub_devices: Vec<FakeDevice>,
    memory_module: MemoryModule,
    temperature: TemperatureSensor,
    power: PowerDomain,
}

struct MemoryModule {
    size: u64,
    free: u64,
}
struct TemperatureSensor {
    celsius: f64,
}
struct PowerDomain {
    watts: u64,
}

struct Spec {
    name: &'static str,
    device_id: u32,
    flags: u32,
    subdevice_id: u32,
    clock_mhz: u32,
    slices: u32,
    subslices_per_slice: u32,
    eus_per_subslice: u32,
    memory: &'static [u64],
    pci_bus: u32,
    pci_device: u32,
    sub_devices: usize,
    free: u64,
    celsius: f64,
    watts: u64,
}

fn build(spec: &Spec) -> FakeDevice {
    let mut properties = DeviceProperties::new_typed();
    properties.device_type = DEVICE_TYPE_GPU;
    properties.vendor_id = 0x8086;
    properties.device_id = spec.device_id;
    properties.flags = spec.flags;
    properties.subdevice_id = spec.subdevice_id;
    properties.core_clock_rate = spec.clock_mhz;
    let total: u64 = spec.memory.iter().sum();
    properties.max_mem_alloc_size = total.min(4 * GIB) - 8 * 1024;
    properties.max_hardware_contexts = 65536;
    properties.num_threads_per_eu = 8;
    properties.physical_eu_simd_width = 8;
    properties.num_eus_per_subslice = spec.eus_per_subslice;
    properties.num_subslices_per_slice = spec.subslices_per_slice;
    properties.num_slices = spec.slices;
    properties.timer_resolution = 1_000_000_000;
    properties.timestamp_valid_bits = 36;
    properties.kernel_timestamp_valid_bits = 32;
    // compute-runtime puts the PCI ids and BDF in the UUID; do likewise.
    let mut uuid = [0u8; 16];
    uuid[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
    uuid[2..4].copy_from_slice(&(spec.device_id as u16).to_le_bytes());
    uuid[8] = spec.pci_bus as u8;
    uuid[15] = spec.subdevice_id as u8
        + if spec.flags & DEVICE_PROPERTY_FLAG_SUBDEVICE != 0 {
            1
        } else {
            0
        };
    properties.uuid = uuid;
    string_to_c_chars(spec.name, &mut properties.name);

    let mut compute = DeviceComputeProperties::new_typed();
    compute.max_total_group_size = 1024;
    compute.max_group_size_x = 1024;
    compute.max_group_size_y = 1024;
    compute.max_group_size_z = 1024;
    compute.max_group_count_x = u32::MAX;
    compute.max_group_count_y = u32::MAX;
    compute.max_group_count_z = u32::MAX;
    compute.max_shared_local_memory = 65536;
    compute.num_sub_group_sizes = 3;
    compute.sub_group_sizes[..3].copy_from_slice(&[8, 16, 32]);

    let memory = spec
        .memory
        .iter()
        .map(|&size| {
            let mut m = DeviceMemoryProperties::new_typed();
            m.max_clock_rate = 2000;
            m.max_bus_width = 256;
            m.total_size = size;
            string_to_c_chars("DDR", &mut m.name);
            m
        })
        .collect();

    let sub_devices = (0..spec.sub_devices)
        .map(|i| {
            // A tile owns one of the card's memory modules.
            let tile = Spec {
                name: spec.name,
                flags: spec.flags | DEVICE_PROPERTY_FLAG_SUBDEVICE,
                subdevice_id: i as u32,
                slices: spec.slices / spec.sub_devices as u32,
                memory: spec.memory.get(i..i + 1).unwrap_or(&[]),
                sub_devices: 0,
                free: spec.free / spec.sub_devices as u64,
                ..*spec
            };
            build(&tile)
        })
        .collect();

    FakeDevice {
        properties,
        compute,
        memory,
        pci: PciAddress {
            domain: 0,
            bus: spec.pci_bus,
            device: spec.pci_device,
            function: 0,
        },
        sub_devices,
        memory_module: MemoryModule {
            size: total,
            free: spec.free,
        },
        temperature: TemperatureSensor {
            celsius: spec.celsius,
        },
        power: PowerDomain { watts: spec.watts },
    }
}

const SPECS: [Spec; 3] = [
    Spec {
        name: "Fake Intel(R) Arc(TM) A770 Graphics",
        device_id: 0x56a0,
        flags: 0,
        subdevice_id: 0,
        clock_mhz: 2400,
        slices: 1,
        subslices_per_slice: 32,
        eus_per_subslice: 16,
        memory: &[16 * GIB],
        pci_bus: 0x03,
        pci_device: 0,
        sub_devices: 0,
        free: 12 * GIB,
        celsius: 45.5,
        watts: 100,
    },
    Spec {
        name: "Fake Intel(R) Data Center GPU Max 1550",
        device_id: 0x0bd5,
        flags: 0,
        subdevice_id: 0,
        clock_mhz: 1600,
        slices: 2,
        subslices_per_slice: 64,
        eus_per_subslice: 8,
        memory: &[64 * GIB, 64 * GIB],
        pci_bus: 0x29,
        pci_device: 0,
        sub_devices: 2,
        free: 100 * GIB,
        celsius: 60.0,
        watts: 400,
    },
    Spec {
        name: "Fake Intel(R) UHD Graphics 770",
        device_id: 0x4680,
        flags: DEVICE_PROPERTY_FLAG_INTEGRATED,
        subdevice_id: 0,
        clock_mhz: 1450,
        slices: 1,
        subslices_per_slice: 4,
        eus_per_subslice: 8,
        memory: &[8 * GIB],
        pci_bus: 0x00,
        pci_device: 0x02,
        sub_devices: 0,
        free: 6 * GIB,
        celsius: 40.0,
        watts: 15,
    },
];

struct FakeDriver {
    devices: Vec<FakeDevice>,
}

// SAFETY: the devices are built once and never mutated afterwards; the raw pointers
// inside are the null `pNext` fields of the property structs.
unsafe impl Sync for FakeDriver {}
// SAFETY: as for Sync: nothing is mutated after construction, and the only raw pointers
// are null `pNext` fields, which refer to no thread's data.
unsafe impl Send for FakeDriver {}

fn driver() -> &'static FakeDriver {
    static DRIVER: OnceLock<FakeDriver> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let count = config().as_ref().map(|c| c.devices).unwrap_or(0);
        FakeDriver {
            devices: SPECS[..count].iter().map(build).collect(),
        }
    })
}

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn driver_handle() -> DriverHandle {
    DriverHandle(driver() as *const FakeDriver as *mut c_void)
}

fn all_devices() -> impl Iterator<Item = &'static FakeDevice> {
    driver()
        .devices
        .iter()
        .flat_map(|d| std::iter::once(d).chain(d.sub_devices.iter()))
}

/// Resolves a handle to one of our devices; anything else is rejected, never dereferenced.
fn device(handle: DeviceHandle) -> Option<&'static FakeDevice> {
    all_devices().find(|d| std::ptr::eq(*d, handle.0 as *const FakeDevice))
}

fn find<T>(
    handle: *mut c_void,
    field: impl Fn(&'static FakeDevice) -> &'static T,
) -> Option<&'static T> {
    all_devices()
        .map(field)
        .find(|t| std::ptr::eq(*t, handle as *const T))
}

/// The spec's `(pCount, phItems)` contract: a zero count or null array asks for the
/// count; otherwise up to `*pCount` items are written and `*pCount` is updated.
///
/// # Safety
/// `count` must be null or valid for reads and writes, and when `*count` is not zero,
/// `out` must be null or valid for writes of `*count` items of `T`.
unsafe fn fill<T: Copy>(items: &[T], count: *mut u32, out: *mut T) -> ZeResult {
    if count.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    // SAFETY: `count` is not null, and the caller guarantees it and `out` are valid
    // (see # Safety); we write at most `*count` items.
    unsafe {
        if *count == 0 || out.is_null() {
            *count = items.len() as u32;
        } else {
            let n = (*count as usize).min(items.len());
            std::ptr::copy_nonoverlapping(items.as_ptr(), out, n);
            *count = n as u32;
        }
    }
    ZeResult::SUCCESS
}

/// Copies a properties struct out, keeping the caller's `stype` and `pNext`.
///
/// # Safety
/// `T` must be a Level Zero typed struct (a `u32` stype and a `pNext` pointer in its
/// first 16 bytes), and `out` must be null or valid for writes of one `T`.
unsafe fn write_typed<T: Copy>(value: &T, out: *mut T) -> ZeResult {
    if out.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    // SAFETY: `out` is not null and points to a caller-owned T whose first 16 bytes
    // are stype + pNext (see # Safety); we overwrite only the bytes after them, from a
    // `value` of the same type and size.
    unsafe {
        let header = 16;
        let dst = out.cast::<u8>().add(header);
        let src = (value as *const T).cast::<u8>().add(header);
        std::ptr::copy_nonoverlapping(src, dst, std::mem::size_of::<T>() - header);
    }
    ZeResult::SUCCESS
}

// ---- ze: global, driver, device -------------------------------------------------

extern "C" fn zeInit(_flags: u32) -> ZeResult {
    enter("zeInit");
    started();
    match config() {
        Err(problem) => {
            eprintln!("fake-ze-driver: {problem}");
            ZeResult::ERROR_INVALID_ARGUMENT
        }
        Ok(config) => {
            if let Some(text) = &config.stdout {
                println!("{text}");
            }
            config.init_result
        }
    }
}

extern "C" fn zeDriverGet(count: *mut u32, drivers: *mut DriverHandle) -> ZeResult {
    enter("zeDriverGet");
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&[driver_handle()], count, drivers) }
}

extern "C" fn zeDriverGetApiVersion(handle: DriverHandle, version: *mut ApiVersion) -> ZeResult {
    enter("zeDriverGetApiVersion");
    if handle != driver_handle() {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    }
    if version.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    // SAFETY: checked non-null; the caller owns it.
    unsafe { *version = make_version(1, 3) };
    ZeResult::SUCCESS
}

extern "C" fn zeDriverGetProperties(handle: DriverHandle, out: *mut DriverProperties) -> ZeResult {
    enter("zeDriverGetProperties");
    if handle != driver_handle() {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    }
    let mut props = DriverProperties::new_typed();
    props.uuid = *b"fake-ze-driver\0\0";
    // compute-runtime's encoding: 0x01030000 + NEO build.
    props.driver_version = 0x0103_0000 + 26918;
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&props, out) }
}

extern "C" fn zeDeviceGet(
    handle: DriverHandle,
    count: *mut u32,
    devices: *mut DeviceHandle,
) -> ZeResult {
    enter("zeDeviceGet");
    if handle != driver_handle() {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    }
    let flat = config().as_ref().is_ok_and(|c| c.flat);
    let handles: Vec<DeviceHandle> = driver()
        .devices
        .iter()
        .flat_map(|card| {
            let tiles: Vec<&FakeDevice> = card.sub_devices.iter().collect();
            if flat && !tiles.is_empty() {
                tiles
            } else {
                vec![card]
            }
        })
        .map(|d| DeviceHandle(d as *const FakeDevice as *mut c_void))
        .collect();
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&handles, count, devices) }
}

extern "C" fn zeDeviceGetSubDevices(
    handle: DeviceHandle,
    count: *mut u32,
    subs: *mut DeviceHandle,
) -> ZeResult {
    enter("zeDeviceGetSubDevices");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let handles: Vec<DeviceHandle> = device
        .sub_devices
        .iter()
        .map(|d| DeviceHandle(d as *const FakeDevice as *mut c_void))
        .collect();
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&handles, count, subs) }
}

extern "C" fn zeDeviceGetProperties(handle: DeviceHandle, out: *mut DeviceProperties) -> ZeResult {
    enter("zeDeviceGetProperties");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&device.properties, out) }
}

extern "C" fn zeDeviceGetComputeProperties(
    handle: DeviceHandle,
    out: *mut DeviceComputeProperties,
) -> ZeResult {
    enter("zeDeviceGetComputeProperties");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&device.compute, out) }
}

extern "C" fn zeDeviceGetMemoryProperties(
    handle: DeviceHandle,
    count: *mut u32,
    out: *mut DeviceMemoryProperties,
) -> ZeResult {
    enter("zeDeviceGetMemoryProperties");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    if count.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    // SAFETY: caller passes *count typed structs; each keeps its own stype/pNext.
    unsafe {
        if *count == 0 || out.is_null() {
            *count = device.memory.len() as u32;
        } else {
            let n = (*count as usize).min(device.memory.len());
            for (i, module) in device.memory.iter().take(n).enumerate() {
                write_typed(module, out.add(i));
            }
            *count = n as u32;
        }
    }
    ZeResult::SUCCESS
}

extern "C" fn zeDevicePciGetPropertiesExt(
    handle: DeviceHandle,
    out: *mut PciExtProperties,
) -> ZeResult {
    enter("zeDevicePciGetPropertiesExt");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let mut props = PciExtProperties::new_typed();
    props.address = device.pci;
    props.max_speed = PciSpeed {
        gen_version: 4,
        width: 16,
        max_bandwidth: 31_500_000_000,
    };
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&props, out) }
}

// ---- zes: the Sysman telemetry subset -------------------------------------------

extern "C" fn zesDeviceEnumMemoryModules(
    handle: DeviceHandle,
    count: *mut u32,
    out: *mut MemHandle,
) -> ZeResult {
    enter("zesDeviceEnumMemoryModules");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let module = MemHandle(&device.memory_module as *const MemoryModule as *mut c_void);
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&[module], count, out) }
}

extern "C" fn zesMemoryGetProperties(handle: MemHandle, out: *mut ZesMemProperties) -> ZeResult {
    enter("zesMemoryGetProperties");
    let Some(module) = find(handle.0, |d| &d.memory_module) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let mut props = ZesMemProperties::new_typed();
    props.location = ZES_MEM_LOC_DEVICE;
    props.physical_size = module.size;
    props.bus_width = 256;
    props.num_channels = 8;
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&props, out) }
}

extern "C" fn zesMemoryGetState(handle: MemHandle, out: *mut ZesMemState) -> ZeResult {
    enter("zesMemoryGetState");
    let Some(module) = find(handle.0, |d| &d.memory_module) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let mut state = ZesMemState::new_typed();
    state.health = 1; // ZES_MEM_HEALTH_OK
    state.free = module.free;
    state.size = module.size;
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&state, out) }
}

extern "C" fn zesDeviceEnumTemperatureSensors(
    handle: DeviceHandle,
    count: *mut u32,
    out: *mut TempHandle,
) -> ZeResult {
    enter("zesDeviceEnumTemperatureSensors");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let sensor = TempHandle(&device.temperature as *const TemperatureSensor as *mut c_void);
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&[sensor], count, out) }
}

extern "C" fn zesTemperatureGetProperties(
    handle: TempHandle,
    out: *mut ZesTempProperties,
) -> ZeResult {
    enter("zesTemperatureGetProperties");
    if find(handle.0, |d| &d.temperature).is_none() {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    }
    let mut props = ZesTempProperties::new_typed();
    props.sensor_type = ZES_TEMP_SENSORS_GPU;
    props.max_temperature = 105.0;
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&props, out) }
}

extern "C" fn zesTemperatureGetState(handle: TempHandle, out: *mut f64) -> ZeResult {
    enter("zesTemperatureGetState");
    let Some(sensor) = find(handle.0, |d| &d.temperature) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    if out.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    // SAFETY: checked non-null.
    unsafe { *out = sensor.celsius };
    ZeResult::SUCCESS
}

extern "C" fn zesDeviceEnumPowerDomains(
    handle: DeviceHandle,
    count: *mut u32,
    out: *mut PowerHandle,
) -> ZeResult {
    enter("zesDeviceEnumPowerDomains");
    let Some(device) = device(handle) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let domain = PowerHandle(&device.power as *const PowerDomain as *mut c_void);
    // SAFETY: the Level Zero API requires callers to pass a valid count pointer and an
    // array of that many items, which is `fill`'s contract.
    unsafe { fill(&[domain], count, out) }
}

extern "C" fn zesPowerGetProperties(handle: PowerHandle, out: *mut ZesPowerProperties) -> ZeResult {
    enter("zesPowerGetProperties");
    let Some(domain) = find(handle.0, |d| &d.power) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    let mut props = ZesPowerProperties::new_typed();
    props.default_limit = (domain.watts * 1000) as i32;
    props.min_limit = -1;
    props.max_limit = -1;
    // SAFETY: the Level Zero API requires `out` to be null or a writable struct of
    // this type, which is `write_typed`'s contract.
    unsafe { write_typed(&props, out) }
}

/// A counter that grows at exactly the domain's wattage: energy in µJ = W × µs.
extern "C" fn zesPowerGetEnergyCounter(
    handle: PowerHandle,
    out: *mut ZesPowerEnergyCounter,
) -> ZeResult {
    enter("zesPowerGetEnergyCounter");
    let Some(domain) = find(handle.0, |d| &d.power) else {
        return ZeResult::ERROR_INVALID_NULL_HANDLE;
    };
    if out.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    let micros = started().elapsed().as_micros() as u64;
    // SAFETY: checked non-null.
    unsafe {
        *out = ZesPowerEnergyCounter {
            energy: micros * domain.watts,
            timestamp: micros,
        }
    };
    ZeResult::SUCCESS
}

// ---- the exported table getters --------------------------------------------------

/// Writes `entries` (slot, function) into a DDI table of function pointers.
///
/// # Safety
/// `table` must be null or valid for writes of every `slot` in `entries`.
unsafe fn fill_table(table: *mut *const c_void, entries: &[(usize, *const c_void)]) -> ZeResult {
    if table.is_null() {
        return ZeResult::ERROR_INVALID_NULL_POINTER;
    }
    for &(slot, function) in entries {
        // SAFETY: every slot is inside the table the loader passed (checked against
        // the C headers by level-zero-sys's layout test).
        unsafe { *table.add(slot) = function };
    }
    ZeResult::SUCCESS
}

macro_rules! table_getters {
    ($( $name:ident => [ $( $slot:expr => $function:ident ),* $(,)? ] ; )*) => {$(
        /// Fills this DDI table with the functions the fake implements.
        ///
        /// # Safety
        /// `table` must be null or point to the table type this getter is named after.
        #[no_mangle]
        pub unsafe extern "C" fn $name(_version: ApiVersion, table: *mut *const c_void) -> ZeResult {
            // SAFETY: the loader passes a table of the type this getter is named after.
            unsafe { fill_table(table, &[ $( ($slot, $function as *const c_void) ),* ]) }
        }
    )*};
}

table_getters! {
    zeGetGlobalProcAddrTable => [ddi::global::INIT => zeInit];
    zeGetDriverProcAddrTable => [
        ddi::driver::GET => zeDriverGet,
        ddi::driver::GET_API_VERSION => zeDriverGetApiVersion,
        ddi::driver::GET_PROPERTIES => zeDriverGetProperties,
    ];
    zeGetDeviceProcAddrTable => [
        ddi::device::GET => zeDeviceGet,
        ddi::device::GET_SUB_DEVICES => zeDeviceGetSubDevices,
        ddi::device::GET_PROPERTIES => zeDeviceGetProperties,
        ddi::device::GET_COMPUTE_PROPERTIES => zeDeviceGetComputeProperties,
        ddi::device::GET_MEMORY_PROPERTIES => zeDeviceGetMemoryProperties,
        ddi::device::PCI_GET_PROPERTIES_EXT => zeDevicePciGetPropertiesExt,
    ];
    zesGetDeviceProcAddrTable => [
        ddi::zes_device::ENUM_MEMORY_MODULES => zesDeviceEnumMemoryModules,
        ddi::zes_device::ENUM_POWER_DOMAINS => zesDeviceEnumPowerDomains,
        ddi::zes_device::ENUM_TEMPERATURE_SENSORS => zesDeviceEnumTemperatureSensors,
    ];
    zesGetMemoryProcAddrTable => [
        ddi::zes_memory::GET_PROPERTIES => zesMemoryGetProperties,
        ddi::zes_memory::GET_STATE => zesMemoryGetState,
    ];
    zesGetTemperatureProcAddrTable => [
        ddi::zes_temperature::GET_PROPERTIES => zesTemperatureGetProperties,
        ddi::zes_temperature::GET_STATE => zesTemperatureGetState,
    ];
    zesGetPowerProcAddrTable => [
        ddi::zes_power::GET_PROPERTIES => zesPowerGetProperties,
        ddi::zes_power::GET_ENERGY_COUNTER => zesPowerGetEnergyCounter,
    ];
    // Required by loader 1.8.12 but unused: the loader zero-initialises these tables,
    // and a null entry makes the API call return ZE_RESULT_ERROR_UNINITIALIZED.
    zeGetContextProcAddrTable => [];
    zeGetCommandQueueProcAddrTable => [];
    zeGetCommandListProcAddrTable => [];
    zeGetEventProcAddrTable => [];
    zeGetEventPoolProcAddrTable => [];
    zeGetFenceProcAddrTable => [];
    zeGetImageProcAddrTable => [];
    zeGetKernelProcAddrTable => [];
    zeGetMemProcAddrTable => [];
    zeGetModuleProcAddrTable => [];
    zeGetModuleBuildLogProcAddrTable => [];
    zeGetPhysicalMemProcAddrTable => [];
    zeGetSamplerProcAddrTable => [];
    zeGetVirtualMemProcAddrTable => [];
    zetGetDeviceProcAddrTable => [];
    zetGetContextProcAddrTable => [];
    zetGetCommandListProcAddrTable => [];
    zetGetKernelProcAddrTable => [];
    zetGetModuleProcAddrTable => [];
    zetGetDebugProcAddrTable => [];
    zetGetMetricProcAddrTable => [];
    zetGetMetricGroupProcAddrTable => [];
    zetGetMetricQueryProcAddrTable => [];
    zetGetMetricQueryPoolProcAddrTable => [];
    zetGetMetricStreamerProcAddrTable => [];
    zetGetTracerExpProcAddrTable => [];
    zesGetDriverProcAddrTable => [];
    zesGetDiagnosticsProcAddrTable => [];
    zesGetEngineProcAddrTable => [];
    zesGetFabricPortProcAddrTable => [];
    zesGetFanProcAddrTable => [];
    zesGetFirmwareProcAddrTable => [];
    zesGetFrequencyProcAddrTable => [];
    zesGetLedProcAddrTable => [];
    zesGetPerformanceFactorProcAddrTable => [];
    zesGetPsuProcAddrTable => [];
    zesGetRasProcAddrTable => [];
    zesGetSchedulerProcAddrTable => [];
    zesGetStandbyProcAddrTable => [];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_in_decimal_and_hex() {
        assert_eq!(parse_code("0x78000001"), Some(0x7800_0001));
        assert_eq!(parse_code("2013265921"), Some(0x7800_0001));
        assert_eq!(parse_code("uninit"), None);
    }

    #[test]
    fn devices_report_eu_counts_and_tiles() {
        let a770 = build(&SPECS[0]);
        let p = a770.properties;
        assert_eq!(
            p.num_slices * p.num_subslices_per_slice * p.num_eus_per_subslice,
            512
        );
        let max = build(&SPECS[1]);
        assert_eq!(max.sub_devices.len(), 2);
        assert_eq!(
            max.memory.iter().map(|m| m.total_size).sum::<u64>(),
            128 * GIB
        );
        assert!(max
            .sub_devices
            .iter()
            .all(|s| s.properties.flags & DEVICE_PROPERTY_FLAG_SUBDEVICE != 0));
    }
}
