//! Opening a GGUF file: memory-map it, check that it is whole and that candle can
//! read every tensor type in it, and give each failure a precise error.

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file;
use xpu_cpu::mapped::{self, Mmap};

use super::LoadError;

/// A memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    pub mmap: Mmap,
    pub content: gguf_file::Content,
}

/// ggml tensor type ids, for naming types that candle cannot read.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

/// The tensor types candle can load, for error messages.
pub const SUPPORTED_TENSOR_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Opens and validates a GGUF file.
pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::io(path, source))?;
    let mmap = mapped::map_file(&file).map_err(|source| LoadError::io(path, source))?;
    if mmap.len() < 4 || &mmap[..4] != b"GGUF" {
        return Err(LoadError::NotAModel {
            path: path.to_path_buf(),
            reason: format!(
                "it does not start with the GGUF magic bytes (found {:02x?})",
                &mmap[..mmap.len().min(4)]
            ),
        });
    }
    let content = gguf_file::Content::read(&mut Cursor::new(&mmap[..]))
        .map_err(|e| header_error(path, &first_line(&e), mmap.len()))?;

    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        let bytes = (elems / block).saturating_mul(info.ggml_dtype.type_size()) as u64;
        let end = content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
        if end > mmap.len() as u64 {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` ends at byte {end} but the file has only {} bytes",
                    mmap.len()
                ),
            });
        }
    }
    Ok(GgufFile { mmap, content })
}

/// Turns a candle header-parsing error into a [`LoadError`].
fn header_error(path: &Path, message: &str, file_len: usize) -> LoadError {
    if let Some(id) = message
        .strip_prefix("unknown dtype for tensor ")
        .and_then(|rest| rest.trim().parse::<u32>().ok())
    {
        return LoadError::UnsupportedQuantization {
            path: path.to_path_buf(),
            type_name: ggml_type_name(id),
        };
    }
    let eof = message.contains("failed to fill whole buffer")
        || message.contains("remaining")
        || message.contains("UnexpectedEof");
    if eof {
        LoadError::Truncated {
            path: path.to_path_buf(),
            detail: format!("the header ends early ({file_len} bytes in the file)"),
        }
    } else {
        LoadError::InvalidGguf {
            path: path.to_path_buf(),
            reason: message.replace('\n', " "),
        }
    }
}

/// The first line of an error: candle appends a backtrace when `RUST_BACKTRACE`
/// is set, which has no place in a one-line message.
pub fn first_line(error: &dyn std::fmt::Display) -> String {
    error.to_string().lines().next().unwrap_or_default().to_string()
}

/// A string metadata value.
pub fn metadata_str<'a>(content: &'a gguf_file::Content, key: &str) -> Option<&'a str> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

/// An integer metadata value of any width.
pub fn metadata_u64(content: &gguf_file::Content, key: &str) -> Option<u64> {
    use gguf_file::Value::*;
    match content.metadata.get(key)? {
        U8(v) => Some(*v as u64),
        U16(v) => Some(*v as u64),
        U32(v) => Some(*v as u64),
        U64(v) => Some(*v),
        I8(v) => u64::try_from(*v).ok(),
        I16(v) => u64::try_from(*v).ok(),
        I32(v) => u64::try_from(*v).ok(),
        I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}
