//! A bounded first reading of a GGUF file's header, before candle parses it: every length is
//! checked against the bytes that remain, every count against a limit, every tensor's type
//! against those the engine reads and its data against the end of the file. A model file is
//! untrusted input (an operator's download, soon a tenant's upload): a truncated or malformed
//! one must fail with a message that names the problem, never panic or allocate what a
//! corrupt length claims.

use std::io::{Read, Seek, SeekFrom};

/// Most metadata entries or tensors a file may declare.
const MAX_ENTRIES: u64 = 1 << 20;
/// Longest string (a chat template, a token) a file may hold.
const MAX_STRING: u64 = 16 << 20;
/// Most dimensions of a tensor.
const MAX_DIMS: u32 = 4;

/// Why a file is not a GGUF the engine can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    /// The first bytes are not `GGUF`.
    #[error("not a GGUF file (its first bytes are not `GGUF`)")]
    NotGguf,
    /// A format version other than 2 and 3.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The file ends inside its header.
    #[error("the file ends inside its header ({0}); truncated?")]
    Truncated(String),
    /// A count or length beyond what the file could hold.
    #[error("{0} is larger than what is left of the file (truncated?)")]
    TooLarge(String),
    /// A metadata value of a type GGUF does not define.
    #[error("metadata `{key}` has unknown value type {kind}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// Its type id.
        kind: u32,
    },
    /// A tensor whose type the engine cannot read (IQ and TQ quantizations, MXFP4, integers).
    #[error("tensor `{tensor}` has type {kind}, which this engine does not read (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K)")]
    UnsupportedTensorType {
        /// The tensor.
        tensor: String,
        /// Its type's name.
        kind: String,
    },
    /// A tensor with no, too many or empty dimensions, or one too large to address.
    #[error("tensor `{tensor}` has an impossible shape {dims:?}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its dimensions.
        dims: Vec<u64>,
    },
    /// A tensor whose data lies past the end of the file.
    #[error("tensor `{tensor}` lies past the end of the file (truncated?)")]
    TensorOutsideFile {
        /// The tensor.
        tensor: String,
    },
    /// A name or string that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
    /// Reading failed.
    #[error("cannot read the file: {0}")]
    Io(String),
}

/// GGML tensor types by id: name, values per block, bytes per block, whether the engine
/// (candle's reader and our kernels) reads it.
fn tensor_type(id: u32) -> Option<(&'static str, u64, u64, bool)> {
    Some(match id {
        0 => ("F32", 1, 4, true),
        1 => ("F16", 1, 2, true),
        2 => ("Q4_0", 32, 18, true),
        3 => ("Q4_1", 32, 20, true),
        6 => ("Q5_0", 32, 22, true),
        7 => ("Q5_1", 32, 24, true),
        8 => ("Q8_0", 32, 34, true),
        9 => ("Q8_1", 32, 36, true),
        10 => ("Q2_K", 256, 84, true),
        11 => ("Q3_K", 256, 110, true),
        12 => ("Q4_K", 256, 144, true),
        13 => ("Q5_K", 256, 176, true),
        14 => ("Q6_K", 256, 210, true),
        15 => ("Q8_K", 256, 292, true),
        16 => ("IQ2_XXS", 256, 66, false),
        17 => ("IQ2_XS", 256, 74, false),
        18 => ("IQ3_XXS", 256, 98, false),
        19 => ("IQ1_S", 256, 50, false),
        20 => ("IQ4_NL", 32, 18, false),
        21 => ("IQ3_S", 256, 110, false),
        22 => ("IQ2_S", 256, 82, false),
        23 => ("IQ4_XS", 256, 136, false),
        24 => ("I8", 1, 1, false),
        25 => ("I16", 1, 2, false),
        26 => ("I32", 1, 4, false),
        27 => ("I64", 1, 8, false),
        28 => ("F64", 1, 8, false),
        29 => ("IQ1_M", 256, 56, false),
        30 => ("BF16", 1, 2, true),
        34 => ("TQ1_0", 256, 54, false),
        35 => ("TQ2_0", 256, 66, false),
        39 => ("MXFP4", 32, 17, false),
        _ => return None,
    })
}

struct Header<'a, R> {
    reader: &'a mut R,
    /// Bytes left after the current position.
    left: u64,
}

impl<R: Read> Header<'_, R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        if self.left < N as u64 {
            return Err(GgufError::Truncated(what.to_string()));
        }
        let mut buf = [0u8; N];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Io(e.to_string()))?;
        self.left -= N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// Skips `n` bytes that must be in the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.left {
            return Err(GgufError::Truncated(what.to_string()));
        }
        std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())
            .map_err(|e| GgufError::Io(e.to_string()))?;
        self.left -= n;
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING || len > self.left {
            return Err(match len > self.left {
                true => GgufError::Truncated(what.to_string()),
                false => GgufError::TooLarge(format!("{what} ({len} bytes)")),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Io(e.to_string()))?;
        self.left -= len;
        String::from_utf8(buf).map_err(|_| GgufError::NotUtf8(what.to_string()))
    }

    /// Reads (or skips) one value of type `kind`; returns it when it is an unsigned integer
    /// (the alignment key's).
    fn value(&mut self, key: &str, kind: u32, depth: u32) -> Result<Option<u64>, GgufError> {
        let fixed = |kind| match kind {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match kind {
            4 => return self.u32(key).map(|v| Some(v as u64)),
            10 => return self.u64(key).map(Some),
            8 => {
                self.string(key)?;
            }
            9 if depth == 0 => {
                let item = self.u32(key)?;
                let count = self.u64(key)?;
                match fixed(item) {
                    Some(size) => {
                        let bytes = count.checked_mul(size).filter(|&b| b <= self.left);
                        let bytes = bytes.ok_or_else(|| {
                            GgufError::TooLarge(format!("array `{key}` ({count} items)"))
                        })?;
                        self.skip(bytes, key)?;
                    }
                    None => {
                        // Strings (or nested arrays) take at least 8 bytes each.
                        if count > self.left / 8 {
                            return Err(GgufError::TooLarge(format!(
                                "array `{key}` ({count} items)"
                            )));
                        }
                        for _ in 0..count {
                            self.value(key, item, depth + 1)?;
                        }
                    }
                }
            }
            _ => match fixed(kind) {
                Some(size) => self.skip(size, key)?,
                None => {
                    return Err(GgufError::UnknownValueType {
                        key: key.to_string(),
                        kind,
                    })
                }
            },
        }
        Ok(None)
    }
}

/// Reads the header of the GGUF in `reader` (from its start) within bounds; returns `Ok` when
/// candle may parse it and every tensor's data lies inside the file.
pub fn check<R: Read + Seek>(reader: &mut R) -> Result<(), GgufError> {
    let io = |e: std::io::Error| GgufError::Io(e.to_string());
    let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut h = Header { reader, left: len };
    if h.bytes::<4>("magic").ok() != Some(*b"GGUF") {
        return Err(GgufError::NotGguf);
    }
    let version = h.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let tensors = h.u64("tensor count")?;
    let entries = h.u64("metadata count")?;
    if tensors > MAX_ENTRIES {
        return Err(GgufError::TooLarge(format!("the tensor count {tensors}")));
    }
    if entries > MAX_ENTRIES {
        return Err(GgufError::TooLarge(format!("the metadata count {entries}")));
    }
    let mut alignment = 32u64;
    for i in 0..entries {
        let key = h.string(&format!("metadata key {i}"))?;
        let kind = h.u32(&key)?;
        let value = h.value(&key, kind, 0)?;
        // candle drops trailing NULs from strings (some writers pad them): compare as it will.
        if key.trim_end_matches('\0') == "general.alignment" {
            alignment = value
                .filter(|&a| a > 0 && a.is_power_of_two() && a <= 1 << 20)
                .ok_or_else(|| {
                    GgufError::TooLarge("`general.alignment` (or not a power of two)".into())
                })?;
        }
    }
    let mut spans = Vec::with_capacity(tensors.min(4096) as usize);
    for i in 0..tensors {
        let name = h.string(&format!("tensor name {i}"))?;
        let n_dims = h.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadShape {
                tensor: name,
                dims: Vec::new(),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(h.u64(&name)?);
        }
        let elements = dims.iter().try_fold(1u64, |n, &d| {
            n.checked_mul(d).filter(|&n| d > 0 && n < 1 << 48)
        });
        let kind = h.u32(&name)?;
        let offset = h.u64(&name)?;
        let Some(elements) = elements else {
            return Err(GgufError::BadShape { tensor: name, dims });
        };
        let Some((type_name, block, block_bytes, readable)) = tensor_type(kind) else {
            return Err(GgufError::UnsupportedTensorType {
                tensor: name,
                kind: format!("id {kind}"),
            });
        };
        if !readable {
            return Err(GgufError::UnsupportedTensorType {
                tensor: name,
                kind: type_name.to_string(),
            });
        }
        if !dims[0].is_multiple_of(block) {
            return Err(GgufError::BadShape { tensor: name, dims });
        }
        spans.push((name, offset, elements / block * block_bytes));
    }
    let header_end = len - h.left;
    let data_start = header_end.div_ceil(alignment) * alignment;
    for (tensor, offset, bytes) in spans {
        let end = data_start
            .checked_add(offset)
            .and_then(|start| start.checked_add(bytes));
        if end.is_none_or(|end| end > len) {
            return Err(GgufError::TensorOutsideFile { tensor });
        }
    }
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tiny() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny/tiny-qwen2-Q8_0.gguf"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_real_file_passes_and_every_truncation_fails_cleanly() {
        let bytes = tiny();
        check(&mut Cursor::new(&bytes)).unwrap();
        // Every cut inside the header, and a few inside the data.
        let header = 40_000.min(bytes.len());
        for cut in (0..header)
            .step_by(97)
            .chain([bytes.len() - 1, bytes.len() / 2])
        {
            let err = check(&mut Cursor::new(&bytes[..cut])).unwrap_err();
            assert!(
                matches!(
                    err,
                    GgufError::NotGguf
                        | GgufError::Truncated(_)
                        | GgufError::TensorOutsideFile { .. }
                        | GgufError::TooLarge(_)
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    /// candle reads `general.alignment\0\0\0` as `general.alignment` (it drops trailing NULs)
    /// and divided by an alignment of 0 (found by the `lora_adapter` fuzz target).
    #[test]
    fn an_alignment_key_padded_with_nuls_is_checked_as_candle_reads_it() {
        let mut file = b"GGUF".to_vec();
        file.extend(3u32.to_le_bytes());
        file.extend(0u64.to_le_bytes()); // tensors
        file.extend(1u64.to_le_bytes()); // metadata
        let key = b"general.alignment\0\0\0";
        file.extend((key.len() as u64).to_le_bytes());
        file.extend(key);
        file.extend(0u32.to_le_bytes()); // u8
        file.push(0);
        file.extend([0u8; 64]);
        let err = check(&mut Cursor::new(&file)).unwrap_err();
        assert!(
            matches!(err, GgufError::TooLarge(ref what) if what.contains("alignment")),
            "{err}"
        );
    }

    /// The offset of the type id of tensor `name` in `bytes` (after its name and dims).
    fn type_offset(bytes: &[u8], name: &str) -> usize {
        let mut needle = (name.len() as u64).to_le_bytes().to_vec();
        needle.extend_from_slice(name.as_bytes());
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("tensor info");
        let dims_at = at + needle.len();
        let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap());
        dims_at + 4 + 8 * n_dims as usize
    }

    #[test]
    fn an_iq_tensor_is_refused_by_its_type_name() {
        let mut bytes = tiny();
        let at = type_offset(&bytes, "blk.0.ffn_down.weight");
        bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
        let err = check(&mut Cursor::new(&bytes)).unwrap_err();
        assert_eq!(
            err,
            GgufError::UnsupportedTensorType {
                tensor: "blk.0.ffn_down.weight".into(),
                kind: "IQ4_NL".into()
            }
        );
        assert!(err.to_string().contains("IQ4_NL"));
    }

    #[test]
    fn lengths_beyond_the_file_are_refused_before_allocating() {
        let mut bytes = tiny();
        // The first metadata key's length: after magic, version and the two counts.
        bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            check(&mut Cursor::new(&bytes)),
            Err(GgufError::Truncated(_))
        ));
        let mut bytes = tiny();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            check(&mut Cursor::new(&bytes)),
            Err(GgufError::TooLarge(_))
        ));
    }
}
