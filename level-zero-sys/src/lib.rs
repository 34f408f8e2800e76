//! Bindings to the oneAPI Level Zero loader (`libze_loader.so.1`), loaded at run time
//! so that binaries start on hosts without Level Zero.
//!
//! Hand-written for the subset xpu uses, mirroring the 1.4 headers that Debian's
//! `libze-dev` (loader 1.8.12) ships:
//! - [`result`]: every `ze_result_t` with its name and meaning;
//! - [`types`]: the `#[repr(C)]` structs (driver, device, compute, memory, PCI, Sysman);
//! - [`loader`]: [`Loader`] opens the library with `dlopen`, [`Initialized`] makes the
//!   calls that are only safe after a successful `zeInit`;
//! - [`ddi`]: what a driver exports, for the fake driver used in tests.
//!
//! The `loader` feature (on by default) provides [`Loader`]; without it the crate is
//! plain data (types, codes, DDI slots) with no dependencies, which is what a driver
//! needs.
//!
//! Struct layouts are checked against the C headers by `tests/layout.rs`.

pub mod ddi;
#[cfg(feature = "loader")]
pub mod loader;
pub mod result;
pub mod types;

#[cfg(feature = "loader")]
pub use loader::{Initialized, LoadError, Loader};
pub use result::ZeResult;
