//! The bindings against the real system loader (Debian: `libze1`), without any driver.
//! This file is its own test process, so setting the loader's environment is safe.
#![cfg(feature = "loader")]

use level_zero_sys::types::INIT_FLAG_GPU_ONLY;
use level_zero_sys::{Loader, ZeResult};

#[test]
fn the_system_loader_opens_reports_its_version_and_fails_init_without_a_driver() {
    let loader = Loader::open().expect("the Level Zero loader is installed (Debian: libze1)");
    let file = loader
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name")
        .to_string();
    assert!(file.starts_with("libze_loader.so."), "{file}");
    let version = loader
        .file_version()
        .expect("a versioned file name such as libze_loader.so.1.8.0");
    assert_eq!(file, format!("libze_loader.so.{version}"));

    // No driver at all: the loader must answer UNINITIALIZED. This is the last call we
    // make (loader 1.8.12 may crash on calls after a failed zeInit); the API makes any
    // other call impossible without the `Initialized` that only success returns.
    std::env::set_var("ZE_ENABLE_ALT_DRIVERS", "/nonexistent/libze_no_driver.so");
    match loader.init(INIT_FLAG_GPU_ONLY) {
        Err(code) => assert_eq!(code, ZeResult::ERROR_UNINITIALIZED),
        Ok(_) => panic!("zeInit succeeded without any driver"),
    }
}
