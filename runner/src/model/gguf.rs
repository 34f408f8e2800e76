//! Opening a GGUF file: `xpu-gguf` maps it and parses and checks its header once
//! (counts, alignment, dimensions, tensor types and extents); here each of its
//! failures becomes the runner's [`LoadError`], which names the file.

use std::path::Path;

use xpu_gguf::GgufError;
pub use xpu_gguf::{metadata_str, metadata_u64, GgufFile, SUPPORTED_TENSOR_TYPES};

use super::LoadError;

/// Opens and checks a GGUF file.
pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
    GgufFile::open(path).map_err(|e| load_error(path, e))
}

fn load_error(path: &Path, error: GgufError) -> LoadError {
    let path_buf = path.to_path_buf();
    match error {
        GgufError::Io(source) => LoadError::io(path, source),
        e @ GgufError::NotGguf { .. } => LoadError::NotAModel {
            path: path_buf,
            reason: e.to_string(),
        },
        GgufError::Truncated(detail) => LoadError::Truncated {
            path: path_buf,
            detail,
        },
        e @ (GgufError::Corrupt(_) | GgufError::UnsupportedVersion { .. }) => {
            LoadError::InvalidGguf {
                path: path_buf,
                reason: e.to_string(),
            }
        }
        GgufError::UnsupportedType { tensor, type_name } => LoadError::UnsupportedQuantization {
            path: path_buf,
            tensor,
            type_name,
        },
    }
}

/// The first line of an error: candle appends a backtrace when `RUST_BACKTRACE`
/// is set, which has no place in a one-line message.
pub fn first_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}
