//! Bindings to the oneAPI Level Zero loader (`libze_loader.so.1`), loaded at run time
//! so that binaries start on hosts without Level Zero.
