//! GGUF model files for the xpu engines, read once and checked before use.
//!
//! [`GgufFile::open`] memory-maps a file and parses its header from the mapped bytes
//! ([`parse`]), once, for every user: the runner (tokenizer, chat template, model
//! info), our CPU engine and our Vulkan engine. Everything the header claims is
//! checked against the file first: the counts against its size, `general.alignment`
//! (candle's own reader divides by it), the dimensions (their product must not
//! overflow), each tensor's type and its extent inside the file. After that, tensor
//! data are plain slices of the mapping ([`GgufFile::tensor`]) that cannot be out of
//! bounds.
//!
//! [`ModelDesc::read`] turns a header into the description of its model ([`arch`]):
//! hyper-parameters and tensors by role, the same for every engine.
//!
//! The parsed header is candle's [`gguf_file::Content`] (its fields are public), so
//! code written against candle's reader keeps working, and candle's model builders,
//! which take a `Content` by value, get theirs from [`GgufFile::into_parts`] without
//! reading the file again.

pub mod arch;
pub mod mapped;
mod parse;
mod types;

use std::path::{Path, PathBuf};

pub use candle_core::quantized::gguf_file::{self, Content, TensorInfo, Value};
pub use candle_core::quantized::GgmlDType;
pub use mapped::Mmap;

pub use arch::{ArchError, ModelDesc};
pub use parse::parse;
pub use types::{ggml_type_name, SUPPORTED_TENSOR_TYPES};

/// Why a GGUF file cannot be used. The messages say what is wrong with the file;
/// callers add its path.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a GGUF file at all.
    #[error("it does not start with the GGUF magic bytes (found {found:02x?})")]
    NotGguf { found: Vec<u8> },
    #[error("GGUF version {version} is not supported (only 2 and 3); convert the model again with a current llama.cpp")]
    UnsupportedVersion { version: u32 },
    /// The file ends before what its header describes.
    #[error("{0}")]
    Truncated(String),
    /// The header contradicts itself or the file.
    #[error("{0}")]
    Corrupt(String),
    /// A tensor of a ggml type that candle cannot read.
    #[error("tensor `{tensor}` has type {type_name}, which is not supported; supported tensor types: {SUPPORTED_TENSOR_TYPES}")]
    UnsupportedType { tensor: String, type_name: String },
}

/// A memory-mapped GGUF file and its checked header.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// The header: metadata, tensor infos and where the tensor data start.
    pub content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("bytes", &self.mmap.len())
            .field("metadata", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and parses and checks its header.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        // The bounds checked by `parse` hold as long as the file stays as it was, which
        // `mapped` relies on for every model file.
        let mmap = mapped::map_path(path)?;
        let content = parse(&mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// A tensor's header entry and its data, a slice of the mapping.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let info = self.content.tensor_infos.get(name)?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        // In bounds: `parse` checked every tensor's extent against the file.
        Some((info, &self.mmap[start..start + tensor_bytes(info)]))
    }

    /// The mapping and the header, for code that takes a `Content` by value (candle's
    /// model builders read tensors through a cursor over the mapping).
    pub fn into_parts(self) -> (Mmap, Content) {
        (self.mmap, self.content)
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        metadata_str(&self.content, key)
    }

    /// An unsigned integer metadata value of any integer type.
    pub fn metadata_u64(&self, key: &str) -> Option<u64> {
        metadata_u64(&self.content, key)
    }
}

/// The bytes of a tensor's data (checked by [`parse`] not to overflow).
pub fn tensor_bytes(info: &TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

/// A string metadata value.
pub fn metadata_str<'a>(content: &'a Content, key: &str) -> Option<&'a str> {
    match content.metadata.get(key)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// An unsigned integer metadata value of any integer type (negative values: `None`).
pub fn metadata_u64(content: &Content, key: &str) -> Option<u64> {
    value_u64(content.metadata.get(key)?)
}

pub(crate) fn value_u64(value: &Value) -> Option<u64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}
