//! Checks every `#[repr(C)]` mirror and DDI slot against the C headers: a small C
//! program, compiled here with `cc` against `<level_zero/*.h>` (Debian: `libze-dev`),
//! prints `sizeof`/`offsetof` values, and the test compares them with Rust's.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use level_zero_sys::ddi;
use level_zero_sys::types::*;

/// (C expression printed by the program, value computed in Rust).
type Check = (String, usize);

macro_rules! struct_checks {
    ($checks:ident; $( $c_type:literal => $rust:ty { $( $c_field:literal => $rust_field:ident ),* $(,)? } )*) => {$(
        $checks.push((format!("sizeof({})", $c_type), size_of::<$rust>()));
        $( $checks.push((format!("offsetof({}, {})", $c_type, $c_field), offset_of!($rust, $rust_field))); )*
    )*};
}

fn rust_layout() -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    struct_checks! { checks;
        "ze_driver_properties_t" => DriverProperties {
            "stype" => stype, "pNext" => p_next, "uuid" => uuid, "driverVersion" => driver_version,
        }
        "ze_device_properties_t" => DeviceProperties {
            "stype" => stype, "pNext" => p_next, "type" => device_type, "vendorId" => vendor_id,
            "deviceId" => device_id, "flags" => flags, "subdeviceId" => subdevice_id,
            "coreClockRate" => core_clock_rate, "maxMemAllocSize" => max_mem_alloc_size,
            "maxHardwareContexts" => max_hardware_contexts,
            "maxCommandQueuePriority" => max_command_queue_priority,
            "numThreadsPerEU" => num_threads_per_eu, "physicalEUSimdWidth" => physical_eu_simd_width,
            "numEUsPerSubslice" => num_eus_per_subslice, "numSubslicesPerSlice" => num_subslices_per_slice,
            "numSlices" => num_slices, "timerResolution" => timer_resolution,
            "timestampValidBits" => timestamp_valid_bits,
            "kernelTimestampValidBits" => kernel_timestamp_valid_bits, "uuid" => uuid, "name" => name,
        }
        "ze_device_compute_properties_t" => DeviceComputeProperties {
            "stype" => stype, "pNext" => p_next, "maxTotalGroupSize" => max_total_group_size,
            "maxGroupSizeX" => max_group_size_x, "maxGroupSizeY" => max_group_size_y,
            "maxGroupSizeZ" => max_group_size_z, "maxGroupCountX" => max_group_count_x,
            "maxGroupCountY" => max_group_count_y, "maxGroupCountZ" => max_group_count_z,
            "maxSharedLocalMemory" => max_shared_local_memory, "numSubGroupSizes" => num_sub_group_sizes,
            "subGroupSizes" => sub_group_sizes,
        }
        "ze_device_memory_properties_t" => DeviceMemoryProperties {
            "stype" => stype, "pNext" => p_next, "flags" => flags, "maxClockRate" => max_clock_rate,
            "maxBusWidth" => max_bus_width, "totalSize" => total_size, "name" => name,
        }
        "ze_pci_address_ext_t" => PciAddress {
            "domain" => domain, "bus" => bus, "device" => device, "function" => function,
        }
        "ze_pci_speed_ext_t" => PciSpeed {
            "genVersion" => gen_version, "width" => width, "maxBandwidth" => max_bandwidth,
        }
        "ze_pci_ext_properties_t" => PciExtProperties {
            "stype" => stype, "pNext" => p_next, "address" => address, "maxSpeed" => max_speed,
        }
        "zel_version_t" => ZelVersion { "major" => major, "minor" => minor, "patch" => patch }
        "zel_component_version_t" => ZelComponentVersion {
            "component_name" => component_name, "spec_version" => spec_version,
            "component_lib_version" => component_lib_version,
        }
        "zes_mem_properties_t" => ZesMemProperties {
            "stype" => stype, "pNext" => p_next, "type" => mem_type, "onSubdevice" => on_subdevice,
            "subdeviceId" => subdevice_id, "location" => location, "physicalSize" => physical_size,
            "busWidth" => bus_width, "numChannels" => num_channels,
        }
        "zes_mem_state_t" => ZesMemState {
            "stype" => stype, "pNext" => p_next, "health" => health, "free" => free, "size" => size,
        }
        "zes_temp_properties_t" => ZesTempProperties {
            "stype" => stype, "pNext" => p_next, "type" => sensor_type, "onSubdevice" => on_subdevice,
            "subdeviceId" => subdevice_id, "maxTemperature" => max_temperature,
            "isCriticalTempSupported" => is_critical_temp_supported,
            "isThreshold1Supported" => is_threshold1_supported,
            "isThreshold2Supported" => is_threshold2_supported,
        }
        "zes_power_properties_t" => ZesPowerProperties {
            "stype" => stype, "pNext" => p_next, "onSubdevice" => on_subdevice,
            "subdeviceId" => subdevice_id, "canControl" => can_control,
            "isEnergyThresholdSupported" => is_energy_threshold_supported,
            "defaultLimit" => default_limit, "minLimit" => min_limit, "maxLimit" => max_limit,
        }
        "zes_power_energy_counter_t" => ZesPowerEnergyCounter { "energy" => energy, "timestamp" => timestamp }
    }

    // DDI slots are pointer-sized indices.
    let ptr = size_of::<*const ()>();
    let slots: &[(&str, &str, usize)] = &[
        ("ze_global_dditable_t", "pfnInit", ddi::global::INIT),
        ("ze_driver_dditable_t", "pfnGet", ddi::driver::GET),
        (
            "ze_driver_dditable_t",
            "pfnGetApiVersion",
            ddi::driver::GET_API_VERSION,
        ),
        (
            "ze_driver_dditable_t",
            "pfnGetProperties",
            ddi::driver::GET_PROPERTIES,
        ),
        ("ze_device_dditable_t", "pfnGet", ddi::device::GET),
        (
            "ze_device_dditable_t",
            "pfnGetSubDevices",
            ddi::device::GET_SUB_DEVICES,
        ),
        (
            "ze_device_dditable_t",
            "pfnGetProperties",
            ddi::device::GET_PROPERTIES,
        ),
        (
            "ze_device_dditable_t",
            "pfnGetComputeProperties",
            ddi::device::GET_COMPUTE_PROPERTIES,
        ),
        (
            "ze_device_dditable_t",
            "pfnGetMemoryProperties",
            ddi::device::GET_MEMORY_PROPERTIES,
        ),
        (
            "ze_device_dditable_t",
            "pfnPciGetPropertiesExt",
            ddi::device::PCI_GET_PROPERTIES_EXT,
        ),
        (
            "zes_device_dditable_t",
            "pfnEnumMemoryModules",
            ddi::zes_device::ENUM_MEMORY_MODULES,
        ),
        (
            "zes_device_dditable_t",
            "pfnEnumPowerDomains",
            ddi::zes_device::ENUM_POWER_DOMAINS,
        ),
        (
            "zes_device_dditable_t",
            "pfnEnumTemperatureSensors",
            ddi::zes_device::ENUM_TEMPERATURE_SENSORS,
        ),
        (
            "zes_memory_dditable_t",
            "pfnGetProperties",
            ddi::zes_memory::GET_PROPERTIES,
        ),
        (
            "zes_memory_dditable_t",
            "pfnGetState",
            ddi::zes_memory::GET_STATE,
        ),
        (
            "zes_temperature_dditable_t",
            "pfnGetProperties",
            ddi::zes_temperature::GET_PROPERTIES,
        ),
        (
            "zes_temperature_dditable_t",
            "pfnGetState",
            ddi::zes_temperature::GET_STATE,
        ),
        (
            "zes_power_dditable_t",
            "pfnGetProperties",
            ddi::zes_power::GET_PROPERTIES,
        ),
        (
            "zes_power_dditable_t",
            "pfnGetEnergyCounter",
            ddi::zes_power::GET_ENERGY_COUNTER,
        ),
    ];
    for (table, field, slot) in slots {
        checks.push((format!("offsetof({table}, {field})"), slot * ptr));
    }

    let constants: &[(&str, usize)] = &[
        ("ZE_API_VERSION_CURRENT", API_VERSION_CURRENT as usize),
        ("ZE_MAX_DEVICE_NAME", MAX_DEVICE_NAME),
        ("ZE_MAX_DEVICE_UUID_SIZE", MAX_UUID_SIZE),
        ("ZE_SUBGROUPSIZE_COUNT", SUBGROUPSIZE_COUNT),
        ("ZE_INIT_FLAG_GPU_ONLY", INIT_FLAG_GPU_ONLY as usize),
        ("ZE_DEVICE_TYPE_GPU", DEVICE_TYPE_GPU as usize),
        ("ZE_DEVICE_TYPE_VPU", DEVICE_TYPE_VPU as usize),
        (
            "ZE_DEVICE_PROPERTY_FLAG_INTEGRATED",
            DEVICE_PROPERTY_FLAG_INTEGRATED as usize,
        ),
        (
            "ZE_DEVICE_PROPERTY_FLAG_SUBDEVICE",
            DEVICE_PROPERTY_FLAG_SUBDEVICE as usize,
        ),
        (
            "ZE_STRUCTURE_TYPE_DRIVER_PROPERTIES",
            STRUCTURE_TYPE_DRIVER_PROPERTIES as usize,
        ),
        (
            "ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES",
            STRUCTURE_TYPE_DEVICE_PROPERTIES as usize,
        ),
        (
            "ZE_STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES",
            STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES as usize,
        ),
        (
            "ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES",
            STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES as usize,
        ),
        (
            "ZE_STRUCTURE_TYPE_PCI_EXT_PROPERTIES",
            STRUCTURE_TYPE_PCI_EXT_PROPERTIES as usize,
        ),
        (
            "ZES_STRUCTURE_TYPE_MEM_PROPERTIES",
            ZES_STRUCTURE_TYPE_MEM_PROPERTIES as usize,
        ),
        (
            "ZES_STRUCTURE_TYPE_POWER_PROPERTIES",
            ZES_STRUCTURE_TYPE_POWER_PROPERTIES as usize,
        ),
        (
            "ZES_STRUCTURE_TYPE_TEMP_PROPERTIES",
            ZES_STRUCTURE_TYPE_TEMP_PROPERTIES as usize,
        ),
        (
            "ZES_STRUCTURE_TYPE_MEM_STATE",
            ZES_STRUCTURE_TYPE_MEM_STATE as usize,
        ),
        ("ZES_MEM_LOC_DEVICE", ZES_MEM_LOC_DEVICE as usize),
        ("ZES_TEMP_SENSORS_GPU", ZES_TEMP_SENSORS_GPU as usize),
        ("ZEL_COMPONENT_STRING_SIZE", ZEL_COMPONENT_STRING_SIZE),
    ];
    checks.extend(
        constants
            .iter()
            .map(|(name, value)| (name.to_string(), *value)),
    );
    checks
}

/// Compiles and runs the C side; returns expression → value.
fn c_layout(expressions: &[String]) -> BTreeMap<String, usize> {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let source = dir.path().join("layout.c");
    let mut program = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <level_zero/ze_api.h>\n\
         #include <level_zero/ze_ddi.h>\n#include <level_zero/zes_api.h>\n#include <level_zero/zes_ddi.h>\n\
         #include <level_zero/loader/ze_loader.h>\nint main(void) {\n",
    );
    for expr in expressions {
        program.push_str(&format!(
            "  printf(\"%s=%zu\\n\", \"{expr}\", (size_t)({expr}));\n"
        ));
    }
    program.push_str("  return 0;\n}\n");
    std::fs::write(&source, program).expect("write layout.c");

    let exe = dir.path().join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let compiled = Command::new(&cc)
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run the C compiler `{cc}` ({e}); install gcc (Debian: build-essential)"
            )
        });
    assert!(
        compiled.status.success(),
        "compiling the layout probe failed; are the Level Zero headers installed (Debian: libze-dev)?\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let output = Command::new(&exe).output().expect("run the layout probe");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| {
            let (k, v) = line.rsplit_once('=').expect("key=value line");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn rust_mirrors_match_the_c_headers() {
    let rust = rust_layout();
    let expressions: Vec<String> = rust.iter().map(|(e, _)| e.clone()).collect();
    let c = c_layout(&expressions);
    let mismatches: Vec<String> = rust
        .iter()
        .filter(|(expr, value)| c.get(expr) != Some(value))
        .map(|(expr, value)| format!("{expr}: C says {:?}, Rust says {value}", c.get(expr)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "layout mismatches:\n{}",
        mismatches.join("\n")
    );
    // Guard against the C program silently printing nothing.
    assert_eq!(c.len(), rust.len());
    assert_eq!(c["sizeof(ze_device_properties_t)"], 368);
}

#[test]
fn result_codes_match_the_c_headers() {
    let names: Vec<String> = level_zero_sys::result::RESULT_CODES
        .iter()
        .map(|(_, n, _)| n.to_string())
        .collect();
    let c = c_layout(&names);
    for (value, name, _) in level_zero_sys::result::RESULT_CODES {
        assert_eq!(c[*name], *value as usize, "{name}");
    }
}

/// The header's own text, found through the C preprocessor's include search.
fn header_text(name: &str) -> String {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&cc)
        .args(["-E", "-x", "c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "#include <level_zero/{name}>")?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("could not run `{cc} -E`: {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let marker = format!("/level_zero/{name}\"");
    let path = text
        .lines()
        // Line markers look like `# 1 "/usr/include/level_zero/ze_api.h" 1`.
        .filter(|l| l.starts_with('#') && l.contains(&marker))
        .find_map(|l| l.split('"').nth(1))
        .unwrap_or_else(|| panic!("<level_zero/{name}> not found; install libze-dev"));
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn every_result_code_of_the_headers_is_known() {
    let text = header_text("ze_api.h");
    let start = text
        .find("typedef enum _ze_result_t")
        .expect("ze_result_t in ze_api.h");
    let end = start
        + text[start..]
            .find("} ze_result_t;")
            .expect("end of ze_result_t");
    let in_header: std::collections::BTreeSet<&str> = text[start..end]
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("ZE_RESULT_") && *w != "ZE_RESULT_FORCE_UINT32")
        .collect();
    let known: std::collections::BTreeSet<&str> = level_zero_sys::result::RESULT_CODES
        .iter()
        .map(|(_, name, _)| *name)
        .collect();
    assert_eq!(in_header, known);
    assert!(known.len() >= 44, "the 1.4 headers define 44 codes");
}
