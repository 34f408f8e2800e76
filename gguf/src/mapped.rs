//! Read-only memory maps of model files, for every loader in the workspace (GGUF files
//! here, safetensors files in the runner).
//!
//! Mapping is the one `unsafe` step of loading a model: the bytes of a mapped file can
//! change under the program if another process writes or truncates the file. Model
//! files are only read while they are served, as with every GGUF runtime, so we accept
//! that here, in one place, and give the rest of the workspace (the runner forbids
//! `unsafe`) a safe function.

use std::fs::File;
use std::io;
use std::path::Path;

pub use memmap2::Mmap;

/// Maps the whole of `file` read-only.
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the map is read-only, so we never write through it; the remaining hazard
    // (another process modifying or truncating a model file while it is served) is
    // outside what a model server can prevent and is accepted, see the module docs.
    unsafe { Mmap::map(file) }
}

/// Opens `path` and maps it read-only.
pub fn map_path(path: &Path) -> io::Result<Mmap> {
    map_file(&File::open(path)?)
}
