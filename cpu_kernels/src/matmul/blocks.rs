//! The 32-value block formats as the kernels hold them: Q4_0 and Q4_1 (the 4-bit kind) and
//! Q8_0 (the 8-bit kind) repacked from GGML's bytes, and any f32 matrix quantized to Q8_0.

use super::{f16_at, PackedMatrix, Quants, ShapeError, BLOCK, TILE};

/// Bytes of one GGML Q4_0 block: f16 scale, 16 bytes of nibbles.
const Q4_0_BYTES: usize = 18;
/// Bytes of one GGML Q4_1 block: f16 scale, f16 offset, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes of one GGML Q8_0 block: f16 scale, 32 int8 quants.
const Q8_0_BYTES: usize = 34;

/// A Q4_0/Q4_1 block's 16 bytes as 32 quants: element `e < 16` in the low nibble of byte `e`,
/// `16 + e` in its high nibble.
fn ggml_nibbles(bytes: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|e| match e < 16 {
        true => bytes[e] & 0x0f,
        false => bytes[e - 16] >> 4,
    })
}

impl PackedMatrix {
    fn empty_q4(n: usize, k: usize) -> Self {
        let slots = n.div_ceil(TILE) * TILE * (k / BLOCK);
        Self {
            n,
            k,
            d: vec![0.0; slots],
            quants: Quants::Q4 {
                nibbles: vec![0; slots * BLOCK / 2],
                m: vec![0.0; slots],
            },
        }
    }

    fn empty_q8(n: usize, k: usize) -> Self {
        let slots = n.div_ceil(TILE) * TILE * (k / BLOCK);
        Self {
            n,
            k,
            d: vec![0.0; slots],
            quants: Quants::Q8 {
                quants: vec![0; slots * BLOCK],
            },
        }
    }

    /// Repacks GGML Q4_0 data of a `[n, k]` matrix (`w = d * (q - 8)`).
    pub fn from_q4_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), Q4_0_BYTES, BLOCK)?;
        Self::from_4bit(
            bytes.chunks_exact(Q4_0_BYTES).map(|block| {
                let d = f16_at(block, 0);
                (d, -8.0 * d, ggml_nibbles(&block[2..18]))
            }),
            n,
            k,
        )
    }

    /// Repacks GGML Q4_1 data of a `[n, k]` matrix (`w = d * q + m`).
    pub fn from_q4_1(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), Q4_1_BYTES, BLOCK)?;
        Self::from_4bit(
            bytes.chunks_exact(Q4_1_BYTES).map(|block| {
                (
                    f16_at(block, 0),
                    f16_at(block, 2),
                    ggml_nibbles(&block[4..20]),
                )
            }),
            n,
            k,
        )
    }

    /// Fills a 4-bit matrix from its blocks in file order: `(d, m, quants)`, quants in 0..16
    /// in element order.
    fn from_4bit(
        blocks: impl Iterator<Item = (f32, f32, [u8; BLOCK])>,
        n: usize,
        k: usize,
    ) -> Result<Self, ShapeError> {
        let mut matrix = Self::empty_q4(n, k);
        let nb = k / BLOCK;
        for (i, (d, m, quants)) in blocks.enumerate() {
            let (row, b) = (i / nb, i % nb);
            let at = matrix.slot(row, b);
            matrix.d[at] = d;
            if let Quants::Q4 {
                nibbles: dst,
                m: offsets,
            } = &mut matrix.quants
            {
                offsets[at] = m;
                let (pair, high) = ((row % TILE) / 2, row % 2 == 1);
                let base = (((row / TILE) * nb + b) * (TILE / 2) + pair) * BLOCK;
                for (e, &q) in quants.iter().enumerate() {
                    dst[base + e] |= if high { q << 4 } else { q };
                }
            }
        }
        Ok(matrix)
    }

    /// Repacks GGML Q8_0 data of a `[n, k]` matrix.
    pub fn from_q8_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), Q8_0_BYTES, BLOCK)?;
        let mut matrix = Self::empty_q8(n, k);
        let nb = k / BLOCK;
        for (i, block) in bytes.chunks_exact(Q8_0_BYTES).enumerate() {
            let at = matrix.slot(i / nb, i % nb);
            matrix.d[at] = f16_at(block, 0);
            if let Quants::Q8 { quants } = &mut matrix.quants {
                for (q, &byte) in quants[at * BLOCK..(at + 1) * BLOCK]
                    .iter_mut()
                    .zip(&block[2..])
                {
                    *q = byte as i8;
                }
            }
        }
        Ok(matrix)
    }

    /// Quantizes f32 weights `[n, k]` (row-major) to Q8_0: the form for types no kernel reads
    /// directly. Scales are rounded through f16, as GGML's Q8_0 stores them.
    pub fn quantize_q8_0(weights: &[f32], n: usize, k: usize) -> Result<Self, ShapeError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(ShapeError::PartialBlock { k, block: BLOCK });
        }
        if weights.len() != n * k {
            return Err(ShapeError::WrongValues {
                n,
                k,
                values: weights.len(),
            });
        }
        let mut matrix = Self::empty_q8(n, k);
        let nb = k / BLOCK;
        for (i, block) in weights.chunks_exact(BLOCK).enumerate() {
            let at = matrix.slot(i / nb, i % nb);
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = half::f16::from_f32(amax / 127.0).to_f32();
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            matrix.d[at] = d;
            if let Quants::Q8 { quants } = &mut matrix.quants {
                for (q, &v) in quants[at * BLOCK..(at + 1) * BLOCK].iter_mut().zip(block) {
                    *q = (v * id).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        Ok(matrix)
    }
}
