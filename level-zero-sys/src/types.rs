//! `#[repr(C)]` mirrors of the Level Zero 1.4 structs, enums and handles we use.
//!
//! Field names follow Rust conventions; the C name is given where it differs in a
//! non-obvious way. Sizes and offsets are checked against the C headers by
//! `tests/layout.rs`.

use std::ffi::{c_char, c_void, CStr};

/// `ze_api_version_t`: `major << 16 | minor`.
pub type ApiVersion = u32;
/// `ze_bool_t`.
pub type ZeBool = u8;

/// `ZE_MAKE_VERSION(major, minor)`.
pub const fn make_version(major: u32, minor: u32) -> ApiVersion {
    (major << 16) | (minor & 0xffff)
}

/// The API version of the headers these bindings mirror (`ZE_API_VERSION_CURRENT`).
pub const API_VERSION_CURRENT: ApiVersion = make_version(1, 4);

/// Formats an API version as "major.minor".
pub fn format_api_version(version: ApiVersion) -> String {
    format!("{}.{}", version >> 16, version & 0xffff)
}

macro_rules! handle {
    ($( $(#[$doc:meta])* $name:ident; )*) => {$(
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub *mut c_void);

        impl $name {
            /// The null handle, used to size output arrays.
            pub const NULL: $name = $name(std::ptr::null_mut());
        }
    )*};
}

handle! {
    /// `ze_driver_handle_t`.
    DriverHandle;
    /// `ze_device_handle_t`; also valid as a `zes_device_handle_t` when
    /// `ZES_ENABLE_SYSMAN=1` was set before `zeInit`.
    DeviceHandle;
    /// `zes_mem_handle_t`.
    MemHandle;
    /// `zes_temp_handle_t`.
    TempHandle;
    /// `zes_pwr_handle_t`.
    PowerHandle;
}

// `ze_init_flags_t`
/// Only initialise GPU drivers.
pub const INIT_FLAG_GPU_ONLY: u32 = 1;
/// Only initialise VPU drivers.
pub const INIT_FLAG_VPU_ONLY: u32 = 2;

// `ze_device_type_t`
pub const DEVICE_TYPE_GPU: u32 = 1;
pub const DEVICE_TYPE_CPU: u32 = 2;
pub const DEVICE_TYPE_FPGA: u32 = 3;
pub const DEVICE_TYPE_MCA: u32 = 4;
pub const DEVICE_TYPE_VPU: u32 = 5;

// `ze_device_property_flags_t`
pub const DEVICE_PROPERTY_FLAG_INTEGRATED: u32 = 1;
pub const DEVICE_PROPERTY_FLAG_SUBDEVICE: u32 = 2;
pub const DEVICE_PROPERTY_FLAG_ECC: u32 = 4;
pub const DEVICE_PROPERTY_FLAG_ONDEMANDPAGING: u32 = 8;

// `ze_structure_type_t`
pub const STRUCTURE_TYPE_DRIVER_PROPERTIES: u32 = 0x1;
pub const STRUCTURE_TYPE_DEVICE_PROPERTIES: u32 = 0x3;
pub const STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES: u32 = 0x4;
pub const STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES: u32 = 0x7;
pub const STRUCTURE_TYPE_PCI_EXT_PROPERTIES: u32 = 0x10008;

// `zes_structure_type_t`
pub const ZES_STRUCTURE_TYPE_MEM_PROPERTIES: u32 = 0xb;
pub const ZES_STRUCTURE_TYPE_POWER_PROPERTIES: u32 = 0xd;
pub const ZES_STRUCTURE_TYPE_TEMP_PROPERTIES: u32 = 0x14;
pub const ZES_STRUCTURE_TYPE_MEM_STATE: u32 = 0x1e;

// `zes_mem_loc_t`
pub const ZES_MEM_LOC_SYSTEM: u32 = 0;
pub const ZES_MEM_LOC_DEVICE: u32 = 1;

// `zes_temp_sensors_t`
pub const ZES_TEMP_SENSORS_GLOBAL: u32 = 0;
pub const ZES_TEMP_SENSORS_GPU: u32 = 1;
pub const ZES_TEMP_SENSORS_MEMORY: u32 = 2;

pub const MAX_DEVICE_NAME: usize = 256;
pub const MAX_UUID_SIZE: usize = 16;
pub const SUBGROUPSIZE_COUNT: usize = 8;
pub const ZEL_COMPONENT_STRING_SIZE: usize = 64;

/// Reads a NUL-terminated C string from a fixed-size array, lossily; a missing
/// terminator (a buggy driver) ends the string at the array's end instead of
/// reading past it.
pub fn c_chars_to_string(chars: &[c_char]) -> String {
    // SAFETY: c_char and u8 have the same size and alignment.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(chars.as_ptr().cast(), chars.len()) };
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Writes `s` into a fixed-size C string array, truncating and always NUL-terminating.
pub fn string_to_c_chars(s: &str, out: &mut [c_char]) {
    out.fill(0);
    let n = s.len().min(out.len().saturating_sub(1));
    for (dst, src) in out.iter_mut().zip(&s.as_bytes()[..n]) {
        *dst = *src as c_char;
    }
}

/// `ze_driver_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DriverProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub uuid: [u8; MAX_UUID_SIZE],
    pub driver_version: u32,
}

/// `ze_device_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub device_type: u32,
    pub vendor_id: u32,
    pub device_id: u32,
    pub flags: u32,
    pub subdevice_id: u32,
    /// MHz.
    pub core_clock_rate: u32,
    pub max_mem_alloc_size: u64,
    pub max_hardware_contexts: u32,
    pub max_command_queue_priority: u32,
    pub num_threads_per_eu: u32,
    pub physical_eu_simd_width: u32,
    pub num_eus_per_subslice: u32,
    pub num_subslices_per_slice: u32,
    pub num_slices: u32,
    pub timer_resolution: u64,
    pub timestamp_valid_bits: u32,
    pub kernel_timestamp_valid_bits: u32,
    pub uuid: [u8; MAX_UUID_SIZE],
    pub name: [c_char; MAX_DEVICE_NAME],
}

/// `ze_device_compute_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceComputeProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub max_total_group_size: u32,
    pub max_group_size_x: u32,
    pub max_group_size_y: u32,
    pub max_group_size_z: u32,
    pub max_group_count_x: u32,
    pub max_group_count_y: u32,
    pub max_group_count_z: u32,
    pub max_shared_local_memory: u32,
    pub num_sub_group_sizes: u32,
    pub sub_group_sizes: [u32; SUBGROUPSIZE_COUNT],
}

/// `ze_device_memory_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceMemoryProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub flags: u32,
    pub max_clock_rate: u32,
    pub max_bus_width: u32,
    pub total_size: u64,
    pub name: [c_char; MAX_DEVICE_NAME],
}

/// `ze_pci_address_ext_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub function: u32,
}

/// `ze_pci_speed_ext_t`; -1 means unknown.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PciSpeed {
    pub gen_version: i32,
    pub width: i32,
    pub max_bandwidth: i64,
}

/// `ze_pci_ext_properties_t` (extension `ZE_extension_pci_properties`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PciExtProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub address: PciAddress,
    pub max_speed: PciSpeed,
}

/// `zel_version_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ZelVersion {
    pub major: i32,
    pub minor: i32,
    pub patch: i32,
}

/// `zel_component_version_t` (from `loader/ze_loader.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZelComponentVersion {
    pub component_name: [c_char; ZEL_COMPONENT_STRING_SIZE],
    pub spec_version: ApiVersion,
    pub component_lib_version: ZelVersion,
}

/// `zes_mem_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZesMemProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub mem_type: u32,
    pub on_subdevice: ZeBool,
    pub subdevice_id: u32,
    pub location: u32,
    pub physical_size: u64,
    pub bus_width: i32,
    pub num_channels: i32,
}

/// `zes_mem_state_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZesMemState {
    pub stype: u32,
    pub p_next: *const c_void,
    pub health: u32,
    /// Free bytes.
    pub free: u64,
    /// Allocatable bytes.
    pub size: u64,
}

/// `zes_temp_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZesTempProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub sensor_type: u32,
    pub on_subdevice: ZeBool,
    pub subdevice_id: u32,
    pub max_temperature: f64,
    pub is_critical_temp_supported: ZeBool,
    pub is_threshold1_supported: ZeBool,
    pub is_threshold2_supported: ZeBool,
}

/// `zes_power_properties_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZesPowerProperties {
    pub stype: u32,
    pub p_next: *mut c_void,
    pub on_subdevice: ZeBool,
    pub subdevice_id: u32,
    pub can_control: ZeBool,
    pub is_energy_threshold_supported: ZeBool,
    pub default_limit: i32,
    pub min_limit: i32,
    pub max_limit: i32,
}

/// `zes_power_energy_counter_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ZesPowerEnergyCounter {
    /// Monotonic energy counter in microjoules.
    pub energy: u64,
    /// Microsecond timestamp of the sample (only deltas are meaningful).
    pub timestamp: u64,
}

/// Structs that start with `stype`/`pNext`: create them zeroed with the right `stype`,
/// as the spec requires before passing them to a query.
pub trait Typed: Sized {
    /// The `ze_structure_type_t` / `zes_structure_type_t` value.
    const STYPE: u32;

    /// A zeroed value with `stype` set and `pNext` null.
    fn new_typed() -> Self {
        // SAFETY: every implementor is a repr(C) struct of integers, floats, arrays
        // and raw pointers, for which all-zero bytes are a valid value.
        let mut value: Self = unsafe { std::mem::zeroed() };
        // SAFETY: every implementor has `stype: u32` as its first field.
        unsafe { *(&mut value as *mut Self).cast::<u32>() = Self::STYPE };
        value
    }
}

impl Typed for DriverProperties {
    const STYPE: u32 = STRUCTURE_TYPE_DRIVER_PROPERTIES;
}
impl Typed for DeviceProperties {
    const STYPE: u32 = STRUCTURE_TYPE_DEVICE_PROPERTIES;
}
impl Typed for DeviceComputeProperties {
    const STYPE: u32 = STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES;
}
impl Typed for DeviceMemoryProperties {
    const STYPE: u32 = STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES;
}
impl Typed for PciExtProperties {
    const STYPE: u32 = STRUCTURE_TYPE_PCI_EXT_PROPERTIES;
}
impl Typed for ZesMemProperties {
    const STYPE: u32 = ZES_STRUCTURE_TYPE_MEM_PROPERTIES;
}
impl Typed for ZesMemState {
    const STYPE: u32 = ZES_STRUCTURE_TYPE_MEM_STATE;
}
impl Typed for ZesTempProperties {
    const STYPE: u32 = ZES_STRUCTURE_TYPE_TEMP_PROPERTIES;
}
impl Typed for ZesPowerProperties {
    const STYPE: u32 = ZES_STRUCTURE_TYPE_POWER_PROPERTIES;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_structs_start_zeroed_with_their_stype() {
        let p = DeviceProperties::new_typed();
        assert_eq!(p.stype, STRUCTURE_TYPE_DEVICE_PROPERTIES);
        assert!(p.p_next.is_null());
        assert_eq!(p.vendor_id, 0);
        assert_eq!(ZesMemState::new_typed().stype, 0x1e);
    }

    #[test]
    fn c_strings_round_trip_and_unterminated_ones_stay_in_bounds() {
        let mut buf = [0 as c_char; 8];
        string_to_c_chars("Arc A770 Graphics", &mut buf);
        assert_eq!(c_chars_to_string(&buf), "Arc A77");
        let unterminated = [b'x' as c_char; 4];
        assert_eq!(c_chars_to_string(&unterminated), "xxxx");
    }

    #[test]
    fn api_versions() {
        assert_eq!(make_version(1, 4), 0x0001_0004);
        assert_eq!(format_api_version(API_VERSION_CURRENT), "1.4");
    }
}
