//! The GGUF header, parsed from the file's bytes and checked against them.
//!
//! Layout (versions 2 and 3, little-endian): magic `GGUF`, version (u32), tensor count
//! and metadata count (u64), the metadata (key string, value type u32, value), the
//! tensor infos (name string, dimension count u32, dimensions u64 innermost first,
//! type u32, offset u64 from the start of the data), padding to `general.alignment`
//! (default 32), then the tensor data.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::Shape;

use crate::types::{ggml_dtype, ggml_type_name};
use crate::{tensor_bytes, value_u64, GgufError};

/// Alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays nest (arrays of arrays); bound the recursion.
const MAX_VALUE_DEPTH: usize = 8;
/// Smallest possible metadata entry: an empty key, a value type and one byte.
const MIN_METADATA_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible tensor info: an empty name, no dimension, a type and an offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// What to tell the user about a corrupt header.
const REDOWNLOAD: &str = "download or convert it again";

/// Parses and checks the header of the GGUF file whose bytes are `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Content, GgufError> {
    let mut r = Reader { bytes, pos: 0 };
    if bytes.len() < 4 || &bytes[..4] != b"GGUF" {
        return Err(GgufError::NotGguf {
            found: bytes[..bytes.len().min(4)].to_vec(),
        });
    }
    r.pos = 4;
    let version = r.u32("the version")?;
    let magic = match version {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        _ => return Err(GgufError::UnsupportedVersion { version }),
    };
    let tensor_count = r.u64("the tensor count")?;
    let metadata_count = r.u64("the metadata count")?;
    let least = tensor_count
        .saturating_mul(MIN_TENSOR_INFO_BYTES)
        .saturating_add(metadata_count.saturating_mul(MIN_METADATA_BYTES));
    // A cut file and a corrupt count look the same here; either way the file must be
    // fetched again, and the counts are safe to allocate for after this check.
    if least > r.remaining() {
        return Err(GgufError::Truncated(format!(
            "its header declares {tensor_count} tensors and {metadata_count} metadata entries, more than \
             the file's {} bytes can hold",
            bytes.len()
        )));
    }

    let mut metadata = HashMap::with_capacity(metadata_count as usize);
    for _ in 0..metadata_count {
        let key = r.string("a metadata key")?;
        let value_type = r.u32(&format!("the type of metadata `{key}`"))?;
        let value = r.value(value_type, &key, 0)?;
        match metadata.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            Entry::Occupied(slot) => {
                return Err(GgufError::Corrupt(format!(
                    "metadata key `{}` appears twice; {REDOWNLOAD}",
                    slot.key()
                )))
            }
        }
    }

    let mut tensor_infos = HashMap::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let (name, info) = r.tensor_info()?;
        match tensor_infos.entry(name) {
            Entry::Vacant(slot) => {
                slot.insert(info);
            }
            Entry::Occupied(slot) => {
                return Err(GgufError::Corrupt(format!(
                    "tensor `{}` appears twice; {REDOWNLOAD}",
                    slot.key()
                )))
            }
        }
    }

    let alignment = alignment(&metadata)?;
    let tensor_data_offset = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::Corrupt(format!("its header is too large; {REDOWNLOAD}")))?;
    check_extents(
        &tensor_infos,
        tensor_data_offset,
        alignment,
        bytes.len() as u64,
    )?;
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset,
    })
}

/// `general.alignment`: a power of two (the tensor data start and every tensor's
/// offset are multiples of it).
fn alignment(metadata: &HashMap<String, Value>) -> Result<u64, GgufError> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value_u64(value) {
        Some(a) if a.is_power_of_two() => Ok(a),
        Some(a) => Err(GgufError::Corrupt(format!(
            "metadata `general.alignment` is {a}, but it must be a power of two such as 32 (the default); {REDOWNLOAD}"
        ))),
        None => Err(GgufError::Corrupt(format!(
            "metadata `general.alignment` is {value:?}, but it must be an unsigned integer such as 32; {REDOWNLOAD}"
        ))),
    }
}

/// Every tensor starts at a multiple of the alignment, lies inside the file, and
/// overlaps no other tensor.
fn check_extents(
    tensors: &HashMap<String, TensorInfo>,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let mut extents = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        if info.offset % alignment != 0 {
            return Err(GgufError::Corrupt(format!(
                "tensor `{name}` starts at offset {}, which is not a multiple of the alignment {alignment}; {REDOWNLOAD}",
                info.offset
            )));
        }
        // `tensor_info` checked that the size fits in memory.
        let size = tensor_bytes(info) as u64;
        let end = data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(size));
        match end {
            Some(end) if end <= file_len => extents.push((info.offset, info.offset + size, name)),
            _ => {
                return Err(GgufError::Truncated(format!(
                    "tensor `{name}` ends at byte {} but the file has only {file_len} bytes",
                    end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string())
                )))
            }
        }
    }
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let ((_, end, first), (start, _, second)) = (&pair[0], &pair[1]);
        if end > start {
            return Err(GgufError::Corrupt(format!(
                "tensors `{first}` and `{second}` overlap; {REDOWNLOAD}"
            )));
        }
    }
    Ok(())
}

/// A cursor over the header bytes; every read names what it reads, for the error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "the header ends inside {what} (it needs {n} bytes at byte {}, the file has {})",
                self.pos,
                self.bytes.len()
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        // As llama.cpp and candle: token texts of some models are not valid UTF-8.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = format!("metadata `{key}`");
        Ok(match value_type {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Corrupt(format!(
                    "metadata `{key}` is a boolean of value {b} (only 0 and 1 are); {REDOWNLOAD}"
                )))
                }
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(GgufError::Corrupt(format!(
                        "metadata `{key}` nests arrays more than {MAX_VALUE_DEPTH} deep; {REDOWNLOAD}"
                    )));
                }
                let item_type = self.u32(&what)?;
                let len = self.u64(&what)?;
                if len.saturating_mul(min_value_bytes(item_type)) > self.remaining() {
                    return Err(GgufError::Truncated(format!(
                        "metadata `{key}` is an array of {len} items, more than the rest of the file holds"
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                "metadata `{key}` has value type {other}, which GGUF does not define; {REDOWNLOAD}"
            )))
            }
        })
    }

    fn tensor_info(&mut self) -> Result<(String, TensorInfo), GgufError> {
        let name = self.string("a tensor name")?;
        let what = format!("the info of tensor `{name}`");
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::Corrupt(format!(
                "tensor `{name}` has {n_dims} dimensions, more than ggml's {MAX_DIMS}; {REDOWNLOAD}"
            )));
        }
        // Stored innermost first; candle's shapes are outermost first.
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&what)?);
        }
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let overflow = || {
            GgufError::Corrupt(format!(
                "tensor `{name}` has dimensions {dims:?}, whose product overflows; {REDOWNLOAD}"
            ))
        };
        // ggml counts elements and bytes in int64.
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
            .ok_or_else(overflow)?;
        let dtype = ggml_dtype(type_id).ok_or_else(|| GgufError::UnsupportedType {
            tensor: name.clone(),
            type_name: ggml_type_name(type_id),
        })?;
        let block = dtype.block_size() as u64;
        let row = dims.first().copied().unwrap_or(1);
        if row % block != 0 {
            return Err(GgufError::Corrupt(format!(
                "tensor `{name}` has rows of {row} values, not a whole number of {} blocks of {block}; {REDOWNLOAD}",
                ggml_type_name(type_id)
            )));
        }
        if (elements / block)
            .checked_mul(dtype.type_size() as u64)
            .is_none_or(|b| usize::try_from(b).is_err())
        {
            return Err(overflow());
        }
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        Ok((
            name,
            TensorInfo {
                ggml_dtype: dtype,
                shape: Shape::from(shape),
                offset,
            },
        ))
    }
}

/// The fewest bytes a value of GGUF type `value_type` takes (for array lengths).
fn min_value_bytes(value_type: u32) -> u64 {
    match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 4 + 8,
        10..=12 => 8,
        // An unknown type fails when the first item is read.
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes GGUF headers (and zeroed tensor data) for the tests.
    #[derive(Default)]
    struct Builder {
        metadata: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u32, u64)>,
        tensor_count: Option<u64>,
        data_bytes: usize,
    }

    impl Builder {
        fn meta(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
            self.metadata.push((key.into(), value_type, value.to_vec()));
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
            self.tensors
                .push((name.into(), dims.to_vec(), type_id, offset));
            self
        }

        fn data(mut self, bytes: usize) -> Self {
            self.data_bytes = bytes;
            self
        }

        fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(
                self.tensor_count
                    .unwrap_or(self.tensors.len() as u64)
                    .to_le_bytes(),
            );
            out.extend((self.metadata.len() as u64).to_le_bytes());
            let string = |out: &mut Vec<u8>, s: &str| {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            };
            for (key, value_type, value) in &self.metadata {
                string(&mut out, key);
                out.extend(value_type.to_le_bytes());
                out.extend(value);
            }
            for (name, dims, type_id, offset) in &self.tensors {
                string(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(type_id.to_le_bytes());
                out.extend(offset.to_le_bytes());
            }
            out.resize(out.len().next_multiple_of(32), 0);
            out.resize(out.len() + self.data_bytes, 0);
            out
        }
    }

    fn corrupt(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(e @ (GgufError::Corrupt(_) | GgufError::Truncated(_))) => e.to_string(),
            Err(other) => panic!("expected a corrupt or truncated header, got {other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    fn f32_matrix() -> Builder {
        // An 8×4 F32 matrix: 128 bytes.
        Builder::default().tensor("w", &[8, 4], 0, 0).data(128)
    }

    #[test]
    fn a_well_formed_header_is_read_as_candle_reads_it() {
        let bytes = f32_matrix()
            .meta("general.architecture", 8, b"\x05\0\0\0\0\0\0\0llama")
            .build();
        let content = parse(&bytes).unwrap();
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "llama"
        );
        let w = &content.tensor_infos["w"];
        assert_eq!(w.shape.dims(), &[4, 8]);
        let ours = content.tensor_data_offset;
        let candle = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(candle.tensor_data_offset, ours);
        assert_eq!(candle.tensor_infos["w"].shape, w.shape);
    }

    #[test]
    fn alignment_must_be_a_power_of_two() {
        for bad in [0u32, 3, 48] {
            let bytes = f32_matrix()
                .meta("general.alignment", 4, &bad.to_le_bytes())
                .build();
            let error = corrupt(&bytes);
            assert!(
                error.contains("general.alignment") && error.contains("power of two"),
                "{error}"
            );
        }
        let bytes = f32_matrix()
            .meta("general.alignment", 6, &1.5f32.to_le_bytes())
            .build();
        assert!(corrupt(&bytes).contains("unsigned integer"));
        let bytes = f32_matrix()
            .meta("general.alignment", 4, &64u32.to_le_bytes())
            .build();
        assert_eq!(parse(&bytes).unwrap().tensor_data_offset % 64, 0);
    }

    #[test]
    fn counts_must_fit_the_file() {
        let mut builder = f32_matrix();
        builder.tensor_count = Some(u64::MAX / 2);
        let error = corrupt(&builder.build());
        assert!(
            error.contains("declares") && error.contains("tensors"),
            "{error}"
        );
    }

    #[test]
    fn dimensions_whose_product_overflows() {
        let bytes = Builder::default()
            .tensor("huge", &[1 << 32, 1 << 32, 4], 0, 0)
            .build();
        let error = corrupt(&bytes);
        assert!(
            error.contains("`huge`") && error.contains("overflows"),
            "{error}"
        );
        let bytes = Builder::default()
            .tensor("deep", &[1, 1, 1, 1, 1], 0, 0)
            .build();
        assert!(corrupt(&bytes).contains("5 dimensions"));
    }

    #[test]
    fn tensors_must_lie_inside_the_file() {
        let error = corrupt(&f32_matrix().data(127).build());
        assert!(error.contains("tensor `w` ends at byte"), "{error}");
        let error = corrupt(
            &Builder::default()
                .tensor("w", &[8], 0, u64::MAX - 8)
                .build(),
        );
        assert!(error.contains("`w`"), "{error}");
        let error = corrupt(&Builder::default().tensor("w", &[8], 0, 4).data(64).build());
        assert!(error.contains("not a multiple of the alignment"), "{error}");
        let bytes = Builder::default()
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[8], 0, 32)
            .data(128)
            .build();
        assert!(corrupt(&bytes).contains("overlap"));
    }

    #[test]
    fn block_types_need_whole_blocks() {
        // Q4_0 (id 2) has blocks of 32 values.
        let bytes = Builder::default()
            .tensor("q", &[16, 2], 2, 0)
            .data(64)
            .build();
        assert!(corrupt(&bytes).contains("blocks of 32"));
        let bytes = Builder::default()
            .tensor("q", &[20], 20, 0)
            .data(64)
            .build();
        match parse(&bytes) {
            Err(GgufError::UnsupportedType { tensor, type_name }) => {
                assert_eq!((tensor.as_str(), type_name.as_str()), ("q", "IQ4_NL"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_header_is_truncated_at_every_length() {
        let bytes = f32_matrix()
            .meta("general.name", 8, b"\x03\0\0\0\0\0\0\0abc")
            .build();
        for len in 4..bytes.len() - 128 {
            match parse(&bytes[..len]) {
                Err(GgufError::Truncated(_) | GgufError::Corrupt(_)) => {}
                other => panic!("length {len}: {other:?}"),
            }
        }
        assert!(matches!(parse(b"GGML"), Err(GgufError::NotGguf { .. })));
        assert!(matches!(parse(b"GG"), Err(GgufError::NotGguf { .. })));
    }

    #[test]
    fn bad_metadata_values() {
        let error = corrupt(&Builder::default().meta("k", 99, &[0]).build());
        assert!(
            error.contains("`k`") && error.contains("value type 99"),
            "{error}"
        );
        let error = corrupt(&Builder::default().meta("k", 7, &[2]).build());
        assert!(error.contains("boolean"), "{error}");
        let error = corrupt(
            &Builder::default()
                .meta("k", 4, &[0; 4])
                .meta("k", 4, &[0; 4])
                .build(),
        );
        assert!(error.contains("appears twice"), "{error}");
        let mut array = 4u32.to_le_bytes().to_vec();
        array.extend(u64::MAX.to_le_bytes());
        let error = corrupt(&Builder::default().meta("k", 9, &array).build());
        assert!(error.contains("array of"), "{error}");
    }
}
