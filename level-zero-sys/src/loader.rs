//! The Level Zero loader, opened at run time with `dlopen`.
//!
//! [`Loader::open`] finds `libze_loader.so.1`; a host without it gets a typed
//! [`LoadError`], never a crash at start-up. [`Loader::init`] calls `zeInit` once and
//! only on success hands out an [`Initialized`], the one type that can make further
//! calls. That encodes a hard rule: loader 1.8.12 segfaults on `zeDriverGet` after a
//! failed `zeInit` (it has already `dlclose`d the driver its tables point into).

use std::ffi::{c_void, OsStr};
use std::path::{Path, PathBuf};

use crate::result::ZeResult;
use crate::types::*;

/// File names tried, in order, when no explicit path is given.
pub const LOADER_NAMES: &[&str] = &["libze_loader.so.1", "libze_loader.so"];

/// Why the loader could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No candidate could be opened.
    #[error("the Level Zero loader could not be loaded (tried {tried}): {reason}")]
    NotFound { tried: String, reason: String },
    /// The library loaded but lacks a function every loader exports.
    #[error("{path} is not a usable Level Zero loader: symbol {symbol} is missing")]
    MissingSymbol { path: String, symbol: &'static str },
}

type FnInit = unsafe extern "C" fn(u32) -> ZeResult;
type FnDriverGet = unsafe extern "C" fn(*mut u32, *mut DriverHandle) -> ZeResult;
type FnDriverGetApiVersion = unsafe extern "C" fn(DriverHandle, *mut ApiVersion) -> ZeResult;
type FnDriverGetProperties = unsafe extern "C" fn(DriverHandle, *mut DriverProperties) -> ZeResult;
type FnDeviceGet = unsafe extern "C" fn(DriverHandle, *mut u32, *mut DeviceHandle) -> ZeResult;
type FnDeviceGetSubDevices =
    unsafe extern "C" fn(DeviceHandle, *mut u32, *mut DeviceHandle) -> ZeResult;
type FnDeviceGetProperties = unsafe extern "C" fn(DeviceHandle, *mut DeviceProperties) -> ZeResult;
type FnDeviceGetComputeProperties =
    unsafe extern "C" fn(DeviceHandle, *mut DeviceComputeProperties) -> ZeResult;
type FnDeviceGetMemoryProperties =
    unsafe extern "C" fn(DeviceHandle, *mut u32, *mut DeviceMemoryProperties) -> ZeResult;
type FnDevicePciGetPropertiesExt =
    unsafe extern "C" fn(DeviceHandle, *mut PciExtProperties) -> ZeResult;
type FnLoaderGetVersions = unsafe extern "C" fn(*mut usize, *mut ZelComponentVersion) -> ZeResult;
type FnEnum<H> = unsafe extern "C" fn(DeviceHandle, *mut u32, *mut H) -> ZeResult;
type FnGet<H, T> = unsafe extern "C" fn(H, *mut T) -> ZeResult;

/// The core functions; every loader since 1.0 exports them.
struct CoreFns {
    init: FnInit,
    driver_get: FnDriverGet,
    driver_get_api_version: FnDriverGetApiVersion,
    driver_get_properties: FnDriverGetProperties,
    device_get: FnDeviceGet,
    device_get_sub_devices: FnDeviceGetSubDevices,
    device_get_properties: FnDeviceGetProperties,
    device_get_compute_properties: FnDeviceGetComputeProperties,
    device_get_memory_properties: FnDeviceGetMemoryProperties,
}

/// Functions looked up with `dlsym` and treated as optional: extensions, the loader's
/// own API and Sysman.
struct OptionalFns {
    device_pci_get_properties_ext: Option<FnDevicePciGetPropertiesExt>,
    loader_get_versions: Option<FnLoaderGetVersions>,
    enum_memory_modules: Option<FnEnum<MemHandle>>,
    memory_get_properties: Option<FnGet<MemHandle, ZesMemProperties>>,
    memory_get_state: Option<FnGet<MemHandle, ZesMemState>>,
    enum_temperature_sensors: Option<FnEnum<TempHandle>>,
    temperature_get_properties: Option<FnGet<TempHandle, ZesTempProperties>>,
    temperature_get_state: Option<FnGet<TempHandle, f64>>,
    enum_power_domains: Option<FnEnum<PowerHandle>>,
    power_get_properties: Option<FnGet<PowerHandle, ZesPowerProperties>>,
    power_get_energy_counter: Option<FnGet<PowerHandle, ZesPowerEnergyCounter>>,
}

/// An opened Level Zero loader. Nothing has been called yet.
pub struct Loader {
    core: CoreFns,
    optional: OptionalFns,
    path: PathBuf,
    // Keeps the function pointers above valid; dropped last.
    _library: libloading::Library,
}

impl Loader {
    /// Opens the system loader: `libze_loader.so.1`, then `libze_loader.so`, through the
    /// dynamic linker's normal search (RUNPATH, `LD_LIBRARY_PATH`, ld.so.cache).
    pub fn open() -> Result<Loader, LoadError> {
        let mut reasons = Vec::new();
        for name in LOADER_NAMES {
            match Self::open_path(Path::new(name)) {
                Ok(loader) => return Ok(loader),
                Err(LoadError::NotFound { reason, .. }) => reasons.push(reason),
                Err(other) => return Err(other),
            }
        }
        Err(LoadError::NotFound {
            tried: LOADER_NAMES.join(", "),
            reason: reasons.join("; "),
        })
    }

    /// Opens the loader at `path` (a file name is searched for like `dlopen` does).
    pub fn open_path(path: &Path) -> Result<Loader, LoadError> {
        let shown = path.display().to_string();
        // SAFETY: loading the Level Zero loader runs its constructors, which only set up
        // its own state; this is the library's documented way of being used.
        let library = unsafe { libloading::Library::new(OsStr::new(path)) }.map_err(|e| {
            LoadError::NotFound {
                tried: shown.clone(),
                reason: e.to_string(),
            }
        })?;

        macro_rules! required {
            ($name:literal) => {{
                // SAFETY: the symbol is declared with this signature in the 1.4 headers.
                match unsafe { library.get::<_>(concat!($name, "\0").as_bytes()) } {
                    Ok(symbol) => *symbol,
                    Err(_) => {
                        return Err(LoadError::MissingSymbol {
                            path: shown.clone(),
                            symbol: $name,
                        })
                    }
                }
            }};
        }
        macro_rules! optional {
            ($name:literal) => {{
                // SAFETY: as above; absent symbols are simply not used.
                unsafe { library.get::<_>(concat!($name, "\0").as_bytes()) }
                    .ok()
                    .map(|s| *s)
            }};
        }

        let core = CoreFns {
            init: required!("zeInit"),
            driver_get: required!("zeDriverGet"),
            driver_get_api_version: required!("zeDriverGetApiVersion"),
            driver_get_properties: required!("zeDriverGetProperties"),
            device_get: required!("zeDeviceGet"),
            device_get_sub_devices: required!("zeDeviceGetSubDevices"),
            device_get_properties: required!("zeDeviceGetProperties"),
            device_get_compute_properties: required!("zeDeviceGetComputeProperties"),
            device_get_memory_properties: required!("zeDeviceGetMemoryProperties"),
        };
        let optional = OptionalFns {
            device_pci_get_properties_ext: optional!("zeDevicePciGetPropertiesExt"),
            loader_get_versions: optional!("zelLoaderGetVersions"),
            enum_memory_modules: optional!("zesDeviceEnumMemoryModules"),
            memory_get_properties: optional!("zesMemoryGetProperties"),
            memory_get_state: optional!("zesMemoryGetState"),
            enum_temperature_sensors: optional!("zesDeviceEnumTemperatureSensors"),
            temperature_get_properties: optional!("zesTemperatureGetProperties"),
            temperature_get_state: optional!("zesTemperatureGetState"),
            enum_power_domains: optional!("zesDeviceEnumPowerDomains"),
            power_get_properties: optional!("zesPowerGetProperties"),
            power_get_energy_counter: optional!("zesPowerGetEnergyCounter"),
        };
        let path = library_file(core.init as *const c_void).unwrap_or_else(|| path.to_path_buf());
        Ok(Loader {
            core,
            optional,
            path,
            _library: library,
        })
    }

    /// The file the loader was loaded from (resolved through symlinks when possible),
    /// e.g. `/usr/lib/x86_64-linux-gnu/libze_loader.so.1.8.0`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loader's version from its file name (`libze_loader.so.1.8.0` → "1.8.0").
    /// Needs no Level Zero call, so it is known even when `zeInit` fails.
    pub fn file_version(&self) -> Option<String> {
        version_from_file_name(self.path.file_name()?)
    }

    /// Calls `zeInit(flags)`. On failure, returns the code; the caller must make no
    /// further Level Zero call in this process (see the module documentation).
    pub fn init(&self, flags: u32) -> Result<Initialized<'_>, ZeResult> {
        // SAFETY: zeInit takes flags by value and may be called at any time.
        unsafe { (self.core.init)(flags) }.ok()?;
        Ok(Initialized { loader: self })
    }
}

/// Finds the file that contains `address` with `dladdr` and resolves symlinks.
fn library_file(address: *const c_void) -> Option<PathBuf> {
    // SAFETY: Dl_info is plain data; dladdr only writes into it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `address` is a function in a loaded library.
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returns a NUL-terminated path owned by the dynamic linker.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
        name.to_bytes(),
    ));
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

/// "libze_loader.so.1.8.0" → "1.8.0"; `None` without a dotted numeric suffix.
pub fn version_from_file_name(name: &OsStr) -> Option<String> {
    let name = name.to_str()?;
    let (_, suffix) = name.split_once(".so.")?;
    let parts: Vec<&str> = suffix.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric && parts.len() >= 2).then(|| suffix.to_string())
}

/// A loader on which `zeInit` succeeded. All further queries live here.
///
/// Handles passed in must come from this same `Initialized` (they do, unless forged
/// from raw pointers).
pub struct Initialized<'l> {
    loader: &'l Loader,
}

/// Calls a `(count, handles)` enumeration function twice: once for the count, once
/// for the handles.
fn enumerate<H: Copy>(
    null: H,
    mut call: impl FnMut(*mut u32, *mut H) -> ZeResult,
) -> Result<Vec<H>, ZeResult> {
    let mut count = 0u32;
    call(&mut count, std::ptr::null_mut()).ok()?;
    let mut handles = vec![null; count as usize];
    call(&mut count, handles.as_mut_ptr()).ok()?;
    handles.truncate(count as usize);
    Ok(handles)
}

impl Initialized<'_> {
    /// `zelLoaderGetVersions`: the loader's components ("loader", layers). `None` when
    /// the loader does not export it.
    pub fn loader_versions(&self) -> Option<Result<Vec<ZelComponentVersion>, ZeResult>> {
        let f = self.loader.optional.loader_get_versions?;
        let mut count = 0usize;
        // SAFETY: documented two-call pattern; a null array returns the count.
        let first = unsafe { f(&mut count, std::ptr::null_mut()) };
        if let Err(e) = first.ok() {
            return Some(Err(e));
        }
        let empty = ZelComponentVersion {
            component_name: [0; ZEL_COMPONENT_STRING_SIZE],
            spec_version: 0,
            component_lib_version: ZelVersion::default(),
        };
        let mut versions = vec![empty; count];
        // SAFETY: `versions` has room for `count` entries.
        let second = unsafe { f(&mut count, versions.as_mut_ptr()) };
        Some(second.ok().map(|()| {
            versions.truncate(count);
            versions
        }))
    }

    /// `zeDriverGet`.
    pub fn drivers(&self) -> Result<Vec<DriverHandle>, ZeResult> {
        // SAFETY: count/array pointers are valid for the sizes passed.
        enumerate(DriverHandle::NULL, |n, h| unsafe {
            (self.loader.core.driver_get)(n, h)
        })
    }

    /// `zeDriverGetProperties`.
    pub fn driver_properties(&self, driver: DriverHandle) -> Result<DriverProperties, ZeResult> {
        let mut props = DriverProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        unsafe { (self.loader.core.driver_get_properties)(driver, &mut props) }.ok()?;
        Ok(props)
    }

    /// `zeDriverGetApiVersion`.
    pub fn driver_api_version(&self, driver: DriverHandle) -> Result<ApiVersion, ZeResult> {
        let mut version = 0;
        // SAFETY: writes one u32.
        unsafe { (self.loader.core.driver_get_api_version)(driver, &mut version) }.ok()?;
        Ok(version)
    }

    /// `zeDeviceGet`.
    pub fn devices(&self, driver: DriverHandle) -> Result<Vec<DeviceHandle>, ZeResult> {
        // SAFETY: count/array pointers are valid for the sizes passed.
        enumerate(DeviceHandle::NULL, |n, h| unsafe {
            (self.loader.core.device_get)(driver, n, h)
        })
    }

    /// `zeDeviceGetSubDevices`.
    pub fn sub_devices(&self, device: DeviceHandle) -> Result<Vec<DeviceHandle>, ZeResult> {
        // SAFETY: count/array pointers are valid for the sizes passed.
        enumerate(DeviceHandle::NULL, |n, h| unsafe {
            (self.loader.core.device_get_sub_devices)(device, n, h)
        })
    }

    /// `zeDeviceGetProperties`.
    pub fn device_properties(&self, device: DeviceHandle) -> Result<DeviceProperties, ZeResult> {
        let mut props = DeviceProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        unsafe { (self.loader.core.device_get_properties)(device, &mut props) }.ok()?;
        Ok(props)
    }

    /// `zeDeviceGetComputeProperties`.
    pub fn compute_properties(
        &self,
        device: DeviceHandle,
    ) -> Result<DeviceComputeProperties, ZeResult> {
        let mut props = DeviceComputeProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        unsafe { (self.loader.core.device_get_compute_properties)(device, &mut props) }.ok()?;
        Ok(props)
    }

    /// `zeDeviceGetMemoryProperties`: one entry per memory module.
    pub fn memory_properties(
        &self,
        device: DeviceHandle,
    ) -> Result<Vec<DeviceMemoryProperties>, ZeResult> {
        let f = self.loader.core.device_get_memory_properties;
        let mut count = 0u32;
        // SAFETY: two-call pattern, null array first.
        unsafe { f(device, &mut count, std::ptr::null_mut()) }.ok()?;
        let mut props = vec![DeviceMemoryProperties::new_typed(); count as usize];
        // SAFETY: `props` holds `count` typed structs.
        unsafe { f(device, &mut count, props.as_mut_ptr()) }.ok()?;
        props.truncate(count as usize);
        Ok(props)
    }

    /// `zeDevicePciGetPropertiesExt`; `None` when the loader lacks the extension.
    pub fn pci_properties(
        &self,
        device: DeviceHandle,
    ) -> Option<Result<PciExtProperties, ZeResult>> {
        let f = self.loader.optional.device_pci_get_properties_ext?;
        let mut props = PciExtProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        Some(unsafe { f(device, &mut props) }.ok().map(|()| props))
    }

    /// Sysman: `zesDeviceEnumMemoryModules`. Needs `ZES_ENABLE_SYSMAN=1` before `zeInit`.
    pub fn memory_modules(&self, device: DeviceHandle) -> Option<Result<Vec<MemHandle>, ZeResult>> {
        let f = self.loader.optional.enum_memory_modules?;
        // SAFETY: count/array pointers are valid for the sizes passed.
        Some(enumerate(MemHandle::NULL, |n, h| unsafe {
            f(device, n, h)
        }))
    }

    /// Sysman: `zesMemoryGetProperties`.
    pub fn memory_module_properties(
        &self,
        module: MemHandle,
    ) -> Option<Result<ZesMemProperties, ZeResult>> {
        let f = self.loader.optional.memory_get_properties?;
        let mut props = ZesMemProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        Some(unsafe { f(module, &mut props) }.ok().map(|()| props))
    }

    /// Sysman: `zesMemoryGetState`.
    pub fn memory_state(&self, module: MemHandle) -> Option<Result<ZesMemState, ZeResult>> {
        let f = self.loader.optional.memory_get_state?;
        let mut state = ZesMemState::new_typed();
        // SAFETY: `state` is a correctly typed, writable struct.
        Some(unsafe { f(module, &mut state) }.ok().map(|()| state))
    }

    /// Sysman: `zesDeviceEnumTemperatureSensors`.
    pub fn temperature_sensors(
        &self,
        device: DeviceHandle,
    ) -> Option<Result<Vec<TempHandle>, ZeResult>> {
        let f = self.loader.optional.enum_temperature_sensors?;
        // SAFETY: count/array pointers are valid for the sizes passed.
        Some(enumerate(TempHandle::NULL, |n, h| unsafe {
            f(device, n, h)
        }))
    }

    /// Sysman: `zesTemperatureGetProperties`.
    pub fn temperature_properties(
        &self,
        sensor: TempHandle,
    ) -> Option<Result<ZesTempProperties, ZeResult>> {
        let f = self.loader.optional.temperature_get_properties?;
        let mut props = ZesTempProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        Some(unsafe { f(sensor, &mut props) }.ok().map(|()| props))
    }

    /// Sysman: `zesTemperatureGetState`, degrees Celsius.
    pub fn temperature(&self, sensor: TempHandle) -> Option<Result<f64, ZeResult>> {
        let f = self.loader.optional.temperature_get_state?;
        let mut celsius = 0f64;
        // SAFETY: writes one double.
        Some(unsafe { f(sensor, &mut celsius) }.ok().map(|()| celsius))
    }

    /// Sysman: `zesDeviceEnumPowerDomains`.
    pub fn power_domains(
        &self,
        device: DeviceHandle,
    ) -> Option<Result<Vec<PowerHandle>, ZeResult>> {
        let f = self.loader.optional.enum_power_domains?;
        // SAFETY: count/array pointers are valid for the sizes passed.
        Some(enumerate(PowerHandle::NULL, |n, h| unsafe {
            f(device, n, h)
        }))
    }

    /// Sysman: `zesPowerGetProperties`.
    pub fn power_properties(
        &self,
        domain: PowerHandle,
    ) -> Option<Result<ZesPowerProperties, ZeResult>> {
        let f = self.loader.optional.power_get_properties?;
        let mut props = ZesPowerProperties::new_typed();
        // SAFETY: `props` is a correctly typed, writable struct.
        Some(unsafe { f(domain, &mut props) }.ok().map(|()| props))
    }

    /// Sysman: `zesPowerGetEnergyCounter`.
    pub fn energy_counter(
        &self,
        domain: PowerHandle,
    ) -> Option<Result<ZesPowerEnergyCounter, ZeResult>> {
        let f = self.loader.optional.power_get_energy_counter?;
        let mut counter = ZesPowerEnergyCounter::default();
        // SAFETY: writes one plain struct.
        Some(unsafe { f(domain, &mut counter) }.ok().map(|()| counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_file_name(OsStr::new("libze_loader.so.1.8.0")).as_deref(),
            Some("1.8.0")
        );
        assert_eq!(
            version_from_file_name(OsStr::new("libze_loader.so.1.28.2")).as_deref(),
            Some("1.28.2")
        );
        assert_eq!(
            version_from_file_name(OsStr::new("libze_loader.so.1")),
            None
        );
        assert_eq!(version_from_file_name(OsStr::new("libze_loader.so")), None);
        assert_eq!(
            version_from_file_name(OsStr::new("libze_loader.so.1.x")),
            None
        );
    }

    #[test]
    fn a_missing_loader_is_a_typed_error() {
        match Loader::open_path(Path::new("/nonexistent/libze_loader.so.1")) {
            Err(LoadError::NotFound { tried, reason }) => {
                assert!(tried.contains("/nonexistent/libze_loader.so.1"));
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a nonexistent path loaded"),
        }
    }

    #[test]
    fn a_library_that_is_not_a_loader_is_rejected_by_symbol() {
        match Loader::open_path(Path::new("libc.so.6")) {
            Err(LoadError::MissingSymbol { symbol, .. }) => assert_eq!(symbol, "zeInit"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("libc accepted as a Level Zero loader"),
        }
    }
}
