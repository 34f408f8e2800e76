//! Driver side of the loader/driver interface (DDI), just enough to write a driver:
//! the `*GetXxxProcAddrTable` functions a driver exports, and the slot of each function
//! we implement in its table.
//!
//! A DDI table (`ze_device_dditable_t`, …) is a C struct of function pointers only, so
//! a slot is an index in units of one pointer. `tests/layout.rs` checks each slot
//! against `offsetof` in the C headers.

/// The tables loader 1.8.12 requires from every driver: `zeInit` fails when one of
/// these is not exported (counted from its `*_ldrddi.cpp`). 17 ze + 12 zet + 17 zes.
pub const REQUIRED_TABLE_GETTERS: [&str; 46] = [
    "zeGetGlobalProcAddrTable",
    "zeGetDriverProcAddrTable",
    "zeGetDeviceProcAddrTable",
    "zeGetContextProcAddrTable",
    "zeGetCommandQueueProcAddrTable",
    "zeGetCommandListProcAddrTable",
    "zeGetEventProcAddrTable",
    "zeGetEventPoolProcAddrTable",
    "zeGetFenceProcAddrTable",
    "zeGetImageProcAddrTable",
    "zeGetKernelProcAddrTable",
    "zeGetMemProcAddrTable",
    "zeGetModuleProcAddrTable",
    "zeGetModuleBuildLogProcAddrTable",
    "zeGetPhysicalMemProcAddrTable",
    "zeGetSamplerProcAddrTable",
    "zeGetVirtualMemProcAddrTable",
    "zetGetDeviceProcAddrTable",
    "zetGetContextProcAddrTable",
    "zetGetCommandListProcAddrTable",
    "zetGetKernelProcAddrTable",
    "zetGetModuleProcAddrTable",
    "zetGetDebugProcAddrTable",
    "zetGetMetricProcAddrTable",
    "zetGetMetricGroupProcAddrTable",
    "zetGetMetricQueryProcAddrTable",
    "zetGetMetricQueryPoolProcAddrTable",
    "zetGetMetricStreamerProcAddrTable",
    "zetGetTracerExpProcAddrTable",
    "zesGetDeviceProcAddrTable",
    "zesGetDriverProcAddrTable",
    "zesGetDiagnosticsProcAddrTable",
    "zesGetEngineProcAddrTable",
    "zesGetFabricPortProcAddrTable",
    "zesGetFanProcAddrTable",
    "zesGetFirmwareProcAddrTable",
    "zesGetFrequencyProcAddrTable",
    "zesGetLedProcAddrTable",
    "zesGetMemoryProcAddrTable",
    "zesGetPerformanceFactorProcAddrTable",
    "zesGetPowerProcAddrTable",
    "zesGetPsuProcAddrTable",
    "zesGetRasProcAddrTable",
    "zesGetSchedulerProcAddrTable",
    "zesGetStandbyProcAddrTable",
    "zesGetTemperatureProcAddrTable",
];

/// Slots in `ze_global_dditable_t`.
pub mod global {
    pub const INIT: usize = 0;
}

/// Slots in `ze_driver_dditable_t`.
pub mod driver {
    pub const GET: usize = 0;
    pub const GET_API_VERSION: usize = 1;
    pub const GET_PROPERTIES: usize = 2;
}

/// Slots in `ze_device_dditable_t`.
pub mod device {
    pub const GET: usize = 0;
    pub const GET_SUB_DEVICES: usize = 1;
    pub const GET_PROPERTIES: usize = 2;
    pub const GET_COMPUTE_PROPERTIES: usize = 3;
    pub const GET_MEMORY_PROPERTIES: usize = 6;
    pub const PCI_GET_PROPERTIES_EXT: usize = 17;
}

/// Slots in `zes_device_dditable_t`.
pub mod zes_device {
    pub const ENUM_MEMORY_MODULES: usize = 16;
    pub const ENUM_POWER_DOMAINS: usize = 18;
    pub const ENUM_TEMPERATURE_SENSORS: usize = 24;
}

/// Slots in `zes_memory_dditable_t`.
pub mod zes_memory {
    pub const GET_PROPERTIES: usize = 0;
    pub const GET_STATE: usize = 1;
}

/// Slots in `zes_temperature_dditable_t`.
pub mod zes_temperature {
    pub const GET_PROPERTIES: usize = 0;
    pub const GET_STATE: usize = 3;
}

/// Slots in `zes_power_dditable_t`.
pub mod zes_power {
    pub const GET_PROPERTIES: usize = 0;
    pub const GET_ENERGY_COUNTER: usize = 1;
}

#[cfg(test)]
mod tests {
    #[test]
    fn required_getters_are_unique_and_split_17_12_17() {
        let names = super::REQUIRED_TABLE_GETTERS;
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 46);
        let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
        assert_eq!(count("zeGet"), 17);
        assert_eq!(count("zetGet"), 12);
        assert_eq!(count("zesGet"), 17);
    }
}
