//! `ze_result_t`: every code of the Level Zero 1.4 headers with its name and a
//! human-readable meaning, so that failures can be reported to users verbatim.

use std::fmt;

/// A `ze_result_t` value as returned by every Level Zero call.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZeResult(pub u32);

macro_rules! result_codes {
    ($( $konst:ident = $value:expr, $name:literal, $meaning:literal; )*) => {
        impl ZeResult {
            $( #[doc = $meaning] pub const $konst: ZeResult = ZeResult($value); )*
        }

        /// Every code of the 1.4 headers: (value, C name, meaning).
        pub const RESULT_CODES: &[(u32, &str, &str)] = &[ $( ($value, $name, $meaning), )* ];
    };
}

result_codes! {
    SUCCESS = 0, "ZE_RESULT_SUCCESS", "success";
    NOT_READY = 1, "ZE_RESULT_NOT_READY", "synchronization primitive not signaled";
    ERROR_DEVICE_LOST = 0x7000_0001, "ZE_RESULT_ERROR_DEVICE_LOST",
        "device hung, reset, was removed, or driver update occurred";
    ERROR_OUT_OF_HOST_MEMORY = 0x7000_0002, "ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY",
        "insufficient host memory to satisfy call";
    ERROR_OUT_OF_DEVICE_MEMORY = 0x7000_0003, "ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY",
        "insufficient device memory to satisfy call";
    ERROR_MODULE_BUILD_FAILURE = 0x7000_0004, "ZE_RESULT_ERROR_MODULE_BUILD_FAILURE",
        "error occurred when building module, see build log for details";
    ERROR_MODULE_LINK_FAILURE = 0x7000_0005, "ZE_RESULT_ERROR_MODULE_LINK_FAILURE",
        "error occurred when linking modules, see build log for details";
    ERROR_DEVICE_REQUIRES_RESET = 0x7000_0006, "ZE_RESULT_ERROR_DEVICE_REQUIRES_RESET",
        "device requires a reset";
    ERROR_DEVICE_IN_LOW_POWER_STATE = 0x7000_0007, "ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE",
        "device currently in low power state";
    EXP_ERROR_DEVICE_IS_NOT_VERTEX = 0x7ff0_0001, "ZE_RESULT_EXP_ERROR_DEVICE_IS_NOT_VERTEX",
        "device is not represented by a fabric vertex";
    EXP_ERROR_VERTEX_IS_NOT_DEVICE = 0x7ff0_0002, "ZE_RESULT_EXP_ERROR_VERTEX_IS_NOT_DEVICE",
        "fabric vertex does not represent a device";
    EXP_ERROR_REMOTE_DEVICE = 0x7ff0_0003, "ZE_RESULT_EXP_ERROR_REMOTE_DEVICE",
        "fabric vertex represents a remote device or subdevice";
    ERROR_INSUFFICIENT_PERMISSIONS = 0x7001_0000, "ZE_RESULT_ERROR_INSUFFICIENT_PERMISSIONS",
        "access denied due to permission level (Sysman); run as a user allowed to read the device's telemetry";
    ERROR_NOT_AVAILABLE = 0x7001_0001, "ZE_RESULT_ERROR_NOT_AVAILABLE",
        "resource already in use and simultaneous access not allowed, or resource was removed (Sysman)";
    ERROR_DEPENDENCY_UNAVAILABLE = 0x7002_0000, "ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE",
        "external required dependency is unavailable or missing (Tools)";
    WARNING_DROPPED_DATA = 0x7002_0001, "ZE_RESULT_WARNING_DROPPED_DATA",
        "data may have been dropped (Tools)";
    ERROR_UNINITIALIZED = 0x7800_0001, "ZE_RESULT_ERROR_UNINITIALIZED",
        "driver is not initialized: no Level Zero driver could be loaded or none found a supported device; install Intel's compute-runtime (Debian/Ubuntu: libze-intel-gpu1, on Debian 12 intel-opencl-icd; NixOS: hardware.graphics.extraPackages = [ pkgs.intel-compute-runtime ]) and check that the GPU is bound to i915 or xe and that /dev/dri/renderD* is readable";
    ERROR_UNSUPPORTED_VERSION = 0x7800_0002, "ZE_RESULT_ERROR_UNSUPPORTED_VERSION",
        "generic error code for unsupported versions";
    ERROR_UNSUPPORTED_FEATURE = 0x7800_0003, "ZE_RESULT_ERROR_UNSUPPORTED_FEATURE",
        "generic error code for unsupported features";
    ERROR_INVALID_ARGUMENT = 0x7800_0004, "ZE_RESULT_ERROR_INVALID_ARGUMENT",
        "generic error code for invalid arguments";
    ERROR_INVALID_NULL_HANDLE = 0x7800_0005, "ZE_RESULT_ERROR_INVALID_NULL_HANDLE",
        "handle argument is not valid";
    ERROR_HANDLE_OBJECT_IN_USE = 0x7800_0006, "ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE",
        "object pointed to by handle still in-use by device";
    ERROR_INVALID_NULL_POINTER = 0x7800_0007, "ZE_RESULT_ERROR_INVALID_NULL_POINTER",
        "pointer argument may not be nullptr";
    ERROR_INVALID_SIZE = 0x7800_0008, "ZE_RESULT_ERROR_INVALID_SIZE",
        "size argument is invalid (e.g., must not be zero)";
    ERROR_UNSUPPORTED_SIZE = 0x7800_0009, "ZE_RESULT_ERROR_UNSUPPORTED_SIZE",
        "size argument is not supported by the device (e.g., too large)";
    ERROR_UNSUPPORTED_ALIGNMENT = 0x7800_000a, "ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT",
        "alignment argument is not supported by the device (e.g., too small)";
    ERROR_INVALID_SYNCHRONIZATION_OBJECT = 0x7800_000b, "ZE_RESULT_ERROR_INVALID_SYNCHRONIZATION_OBJECT",
        "synchronization object in invalid state";
    ERROR_INVALID_ENUMERATION = 0x7800_000c, "ZE_RESULT_ERROR_INVALID_ENUMERATION",
        "enumerator argument is not valid";
    ERROR_UNSUPPORTED_ENUMERATION = 0x7800_000d, "ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION",
        "enumerator argument is not supported by the device";
    ERROR_UNSUPPORTED_IMAGE_FORMAT = 0x7800_000e, "ZE_RESULT_ERROR_UNSUPPORTED_IMAGE_FORMAT",
        "image format is not supported by the device";
    ERROR_INVALID_NATIVE_BINARY = 0x7800_000f, "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY",
        "native binary is not supported by the device";
    ERROR_INVALID_GLOBAL_NAME = 0x7800_0010, "ZE_RESULT_ERROR_INVALID_GLOBAL_NAME",
        "global variable is not found in the module";
    ERROR_INVALID_KERNEL_NAME = 0x7800_0011, "ZE_RESULT_ERROR_INVALID_KERNEL_NAME",
        "kernel name is not found in the module";
    ERROR_INVALID_FUNCTION_NAME = 0x7800_0012, "ZE_RESULT_ERROR_INVALID_FUNCTION_NAME",
        "function name is not found in the module";
    ERROR_INVALID_GROUP_SIZE_DIMENSION = 0x7800_0013, "ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION",
        "group size dimension is not valid for the kernel or device";
    ERROR_INVALID_GLOBAL_WIDTH_DIMENSION = 0x7800_0014, "ZE_RESULT_ERROR_INVALID_GLOBAL_WIDTH_DIMENSION",
        "global width dimension is not valid for the kernel or device";
    ERROR_INVALID_KERNEL_ARGUMENT_INDEX = 0x7800_0015, "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX",
        "kernel argument index is not valid for kernel";
    ERROR_INVALID_KERNEL_ARGUMENT_SIZE = 0x7800_0016, "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE",
        "kernel argument size does not match kernel";
    ERROR_INVALID_KERNEL_ATTRIBUTE_VALUE = 0x7800_0017, "ZE_RESULT_ERROR_INVALID_KERNEL_ATTRIBUTE_VALUE",
        "value of kernel attribute is not valid for the kernel or device";
    ERROR_INVALID_MODULE_UNLINKED = 0x7800_0018, "ZE_RESULT_ERROR_INVALID_MODULE_UNLINKED",
        "module with imports needs to be linked before kernels can be created from it";
    ERROR_INVALID_COMMAND_LIST_TYPE = 0x7800_0019, "ZE_RESULT_ERROR_INVALID_COMMAND_LIST_TYPE",
        "command list type does not match command queue type";
    ERROR_OVERLAPPING_REGIONS = 0x7800_001a, "ZE_RESULT_ERROR_OVERLAPPING_REGIONS",
        "copy operations do not support overlapping regions of memory";
    WARNING_ACTION_REQUIRED = 0x7800_001b, "ZE_RESULT_WARNING_ACTION_REQUIRED",
        "an action is required to complete the desired operation (Sysman)";
    ERROR_UNKNOWN = 0x7fff_fffe, "ZE_RESULT_ERROR_UNKNOWN", "unknown or internal error";
}

impl ZeResult {
    /// True for `ZE_RESULT_SUCCESS`.
    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    /// `Ok(())` for success, the code itself otherwise.
    pub fn ok(self) -> Result<(), ZeResult> {
        if self.is_success() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The C name, e.g. `ZE_RESULT_ERROR_UNINITIALIZED`, or `None` for a code the
    /// 1.4 headers do not define (newer drivers may return newer codes).
    pub fn name(self) -> Option<&'static str> {
        RESULT_CODES
            .iter()
            .find(|(v, _, _)| *v == self.0)
            .map(|(_, n, _)| *n)
    }

    /// What the code means; for unknown codes, a sentence that says so.
    pub fn meaning(self) -> String {
        match RESULT_CODES.iter().find(|(v, _, _)| *v == self.0) {
            Some((_, _, meaning)) => (*meaning).to_string(),
            None => format!(
                "result code {:#010x} is not defined by the Level Zero 1.4 headers (a newer driver or loader may define it)",
                self.0
            ),
        }
    }

    /// The name, or `ZE_RESULT_<hex>` for codes the headers do not define.
    pub fn display_name(self) -> String {
        self.name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("ZE_RESULT_{:#010x}", self.0))
    }
}

impl fmt::Debug for ZeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#010x})", self.display_name(), self.0)
    }
}

impl fmt::Display for ZeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#010x}): {}",
            self.display_name(),
            self.0,
            self.meaning()
        )
    }
}

impl std::error::Error for ZeResult {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named_after_their_constants() {
        for (i, (value, name, meaning)) in RESULT_CODES.iter().enumerate() {
            assert!(name.starts_with("ZE_RESULT_"), "{name}");
            assert!(!meaning.is_empty());
            assert!(
                RESULT_CODES[i + 1..].iter().all(|(v, _, _)| v != value),
                "duplicate value {value:#x}"
            );
        }
        assert_eq!(RESULT_CODES.len(), 44);
    }

    #[test]
    fn known_and_unknown_codes() {
        let r = ZeResult::ERROR_UNINITIALIZED;
        assert_eq!(r.0, 0x7800_0001);
        assert_eq!(r.name(), Some("ZE_RESULT_ERROR_UNINITIALIZED"));
        assert!(r.meaning().contains("compute-runtime"));
        assert_eq!(ZeResult(0x1234).name(), None);
        assert_eq!(ZeResult(0x1234).display_name(), "ZE_RESULT_0x00001234");
        assert!(ZeResult(0x1234).meaning().contains("not defined"));
        assert!(ZeResult::SUCCESS.ok().is_ok());
        assert_eq!(ZeResult::ERROR_UNKNOWN.ok(), Err(ZeResult::ERROR_UNKNOWN));
    }
}
