//! Quantized weight matrices repacked for the CPU kernels, and the parallel matrix product.
//!
//! Layout: weight rows (output columns) are grouped in tiles of four; inside a tile, block `b`
//! of the four rows is stored side by side, so one tile is one sequential stream and a
//! microkernel computes four outputs for each activation row that passes over it. Two weight
//! kinds cover every GGUF the engine loads:
//! - `Q4`: 4-bit quants with a scale and an offset per block (`w = d * q + m`, q in 0..16).
//!   Q4_1 is this form as stored, Q4_0 too with `m = -8 d`. Packed nibbles are what a decode
//!   step streams from memory (5 bits a weight with the scales); for batched steps each tile is
//!   unpacked once into bytes in L1 and every activation row reuses it.
//! - `Q8`: signed 8-bit quants with a scale per block (Q8_0; every other type is re-quantized
//!   to it at load).
//!
//! Determinism: a row's outputs come from the same instruction sequence whatever the number of
//! rows in the step, the tile's position or the thread, and the AVX2 and AVX-512 VNNI kernels
//! compute identical integer sums (no saturation is possible: 4-bit by 8-bit pairs stay far
//! below `i16::MAX`, and the 8-bit path multiplies `|x|` by `±w`, at most 2 * 127 * 127), so a
//! sequence's logits do not depend on what else is in the batch. The portable kernel mirrors
//! the SIMD lanes and reduction order, so it gives the same bits as well.

use super::isa::Isa;
use super::parallel::{self, SharedMut};
use super::quant::{QuantizedRows, BLOCK};

/// Why weights cannot be packed: their shape does not fit the kernels' blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Rows whose length is not a whole number of blocks.
    #[error("{k} inputs is not a multiple of {block}")]
    PartialBlock {
        /// Inputs per row.
        k: usize,
        /// Values per block of the type.
        block: usize,
    },
    /// Quantized data of the wrong size for its shape.
    #[error("{bytes} bytes for a [{n}, {k}] matrix, expected {expected}")]
    WrongSize {
        /// Rows.
        n: usize,
        /// Inputs per row.
        k: usize,
        /// Bytes given.
        bytes: usize,
        /// Bytes the shape needs.
        expected: usize,
    },
    /// f32 weights of the wrong count for their shape.
    #[error("{values} values for a [{n}, {k}] matrix")]
    WrongValues {
        /// Rows.
        n: usize,
        /// Inputs per row.
        k: usize,
        /// Values given.
        values: usize,
    },
}

/// Output columns per tile.
pub const TILE: usize = 4;
/// Bytes of one GGML Q4_0 block: f16 scale, 16 bytes of nibbles.
const Q4_0_BYTES: usize = 18;
/// Bytes of one GGML Q4_1 block: f16 scale, f16 offset, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes of one GGML Q8_0 block: f16 scale, 32 int8 quants.
const Q8_0_BYTES: usize = 34;
/// Values per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;
/// Bytes of one GGML Q4_K super-block: f16 `d` and `dmin`, 12 bytes of 6-bit scales and
/// mins, 128 bytes of nibbles.
const Q4_K_BYTES: usize = 144;
/// Activation rows at or above which a 4-bit tile is unpacked to bytes once and reused.
const UNPACK_FROM_ROWS: usize = 4;
/// Activation rows per cache block of a batched product: the rows' quants stay in L2 while
/// the tiles of a work item pass over them.
const ROW_BLOCK: usize = 64;

enum Quants {
    /// `[tiles][blocks][TILE / 2][32]` bytes: byte `i` of pair `p` holds element `i` of output
    /// `2p` in its low nibble and of output `2p + 1` in its high nibble, so one 32-byte load,
    /// a mask and a shift give two outputs' blocks in element order. Offsets `m` beside the
    /// scales.
    Q4 { nibbles: Vec<u8>, m: Vec<f32> },
    /// `[tiles][blocks][TILE][32]` int8.
    Q8 { quants: Vec<i8> },
}

/// A `[n, k]` weight matrix (n outputs, k inputs) in the kernels' layout.
pub struct PackedMatrix {
    /// Outputs, as in the file.
    n: usize,
    k: usize,
    /// `[tiles][blocks][TILE]` scales.
    d: Vec<f32>,
    quants: Quants,
}

/// What a product does with the values already in its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Overwrite them.
    Store,
    /// Add to them (residual connections).
    Accumulate,
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// A Q4_0/Q4_1 block's 16 bytes as 32 quants: element `e < 16` in the low nibble of byte `e`,
/// `16 + e` in its high nibble.
fn ggml_nibbles(bytes: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|e| match e < 16 {
        true => bytes[e] & 0x0f,
        false => bytes[e - 16] >> 4,
    })
}

/// The 6-bit scale and min of block `j` (0..8) of a Q4_K super-block: blocks 0..4 in the low
/// six bits of bytes `j` and `j + 4`; blocks 4..8 in the nibbles of byte `j + 4` with their two
/// high bits in the top bits of bytes `j - 4` and `j`.
fn q4_k_scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    match j < 4 {
        true => (s[j] & 63, s[j + 4] & 63),
        false => (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        ),
    }
}

impl PackedMatrix {
    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether the weights are 4-bit.
    pub fn is_4bit(&self) -> bool {
        matches!(self.quants, Quants::Q4 { .. })
    }

    /// Bytes of weight data, scales included.
    pub fn bytes(&self) -> usize {
        let quants = match &self.quants {
            Quants::Q4 { nibbles, m } => nibbles.len() + m.len() * 4,
            Quants::Q8 { quants } => quants.len(),
        };
        quants + self.d.len() * 4
    }

    fn tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Checks that rows are whole blocks of `block` values and the data is `block_bytes` per
    /// block.
    fn check_shape(
        n: usize,
        k: usize,
        bytes: usize,
        block_bytes: usize,
        block: usize,
    ) -> Result<(), ShapeError> {
        if !k.is_multiple_of(block) {
            return Err(ShapeError::PartialBlock { k, block });
        }
        let expected = n * k / block * block_bytes;
        if bytes != expected {
            return Err(ShapeError::WrongSize {
                n,
                k,
                bytes,
                expected,
            });
        }
        Ok(())
    }

    /// Where block `b` of weight row `row` goes: `(tile * blocks + b) * TILE + row % TILE`.
    fn slot(&self, row: usize, b: usize) -> usize {
        ((row / TILE) * self.blocks() + b) * TILE + row % TILE
    }

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

    /// Repacks GGML Q4_K data of a `[n, k]` matrix. A super-block of 256 weights holds eight
    /// blocks of 32, each `w = d * sc_j * q - dmin * m_j` with 6-bit `sc_j`, `m_j`: exactly
    /// the 4-bit form with `d_j = d * sc_j` and `m_j = -dmin * m_j` (the products GGML's own
    /// dequantization computes, in f32), so Q4_K runs on the 4-bit kernels unchanged.
    pub fn from_q4_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), Q4_K_BYTES, SUPER_BLOCK)?;
        let blocks = bytes.chunks_exact(Q4_K_BYTES).flat_map(|sb| {
            let (d, dmin) = (f16_at(sb, 0), f16_at(sb, 2));
            let scales: &[u8; 12] = sb[4..16].try_into().expect("12 bytes of scales");
            let qs = &sb[16..144];
            (0..8).map(move |j| {
                let (sc, m) = q4_k_scale_min(j, scales);
                // Blocks 2i and 2i + 1 share bytes 32i..32i+32: low nibbles, then high ones.
                let bytes = &qs[32 * (j / 2)..32 * (j / 2 + 1)];
                let shift = if j % 2 == 1 { 4 } else { 0 };
                let quants: [u8; BLOCK] = std::array::from_fn(|e| (bytes[e] >> shift) & 0x0f);
                (d * sc as f32, -(dmin * m as f32), quants)
            })
        });
        Self::from_4bit(blocks, n, k)
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

    /// Stacks matrices of the same kind and inputs into one (rows of `parts[0]` first): fused
    /// projections (Q, K and V; gate and up) then cost one parallel operation instead of
    /// several. `None` if the kinds or input sizes differ, or a part's rows are not whole tiles.
    pub fn stack(parts: &[&PackedMatrix]) -> Option<Self> {
        let first = parts.first()?;
        let same_kind = parts.iter().all(|p| p.is_4bit() == first.is_4bit());
        if !same_kind || parts.iter().any(|p| p.k != first.k || p.n % TILE != 0) {
            return None;
        }
        let mut d = Vec::new();
        let mut quants = match &first.quants {
            Quants::Q4 { .. } => Quants::Q4 {
                nibbles: Vec::new(),
                m: Vec::new(),
            },
            Quants::Q8 { .. } => Quants::Q8 { quants: Vec::new() },
        };
        for part in parts {
            d.extend_from_slice(&part.d);
            match (&mut quants, &part.quants) {
                (Quants::Q4 { nibbles, m }, Quants::Q4 { nibbles: pn, m: pm }) => {
                    nibbles.extend_from_slice(pn);
                    m.extend_from_slice(pm);
                }
                (Quants::Q8 { quants }, Quants::Q8 { quants: pq }) => quants.extend_from_slice(pq),
                _ => return None,
            }
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            d,
            quants,
        })
    }

    /// Weight row `row`, dequantized (embedding lookups, tests).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.n && out.len() == self.k);
        for b in 0..self.blocks() {
            let at = self.slot(row, b);
            let d = self.d[at];
            let dst = &mut out[b * BLOCK..(b + 1) * BLOCK];
            match &self.quants {
                Quants::Q4 { nibbles, m } => {
                    let pair = ((row / TILE) * self.blocks() + b) * (TILE / 2) + (row % TILE) / 2;
                    let shift = if row % 2 == 1 { 4 } else { 0 };
                    for (o, &byte) in dst
                        .iter_mut()
                        .zip(&nibbles[pair * BLOCK..(pair + 1) * BLOCK])
                    {
                        *o = d * ((byte >> shift) & 0x0f) as f32 + m[at];
                    }
                }
                Quants::Q8 { quants } => {
                    for (o, &q) in dst.iter_mut().zip(&quants[at * BLOCK..(at + 1) * BLOCK]) {
                        *o = d * q as f32;
                    }
                }
            }
        }
    }
}

/// `out[r, col0 + j] (=|+=) sum_i x[r, i] * w[j, i]` for every row of `x` and every output of
/// `w`, on the step's thread pool. `out` is row-major with `ldo` columns per row.
pub fn matmul(
    isa: Isa,
    w: &PackedMatrix,
    x: &QuantizedRows,
    out: &mut [f32],
    ldo: usize,
    col0: usize,
    mode: Output,
) {
    assert_eq!(
        x.k(),
        w.k,
        "activation rows and weights disagree on the inner size"
    );
    let rows = x.rows();
    assert!(col0 + w.n <= ldo && out.len() >= rows * ldo);
    if rows == 0 {
        return;
    }
    let out = SharedMut::new(out);
    let tiles = w.tiles();
    // Several chunks per thread balance uneven progress; each chunk still covers enough tiles
    // that the dispatch cost is small against the work.
    let grain = parallel::grain_for(tiles, 4);
    parallel::for_each_chunk(tiles, grain, |_, tile_range| {
        let mut unpacked = [0u8; UNPACKED_TILE_BYTES_MAX];
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + ROW_BLOCK).min(rows);
            for tile in tile_range.clone() {
                // SAFETY: this work item alone owns columns `tile * TILE ..` of every row.
                unsafe { run_tile(isa, w, tile, x, r0..r1, &mut unpacked, out, ldo, col0, mode) };
            }
            r0 = r1;
        }
    });
}

/// Largest inner size whose unpacked 4-bit tile fits the stack buffer (bigger ones stream
/// packed nibbles for every row, which is correct but slower).
const UNPACKED_TILE_BYTES_MAX: usize = 16 * 1024;

/// Computes the outputs of one tile for rows `rows`.
///
/// # Safety
/// The caller owns `out[r * ldo + col0 + tile * TILE ..][..TILE]` for every `r` in `rows`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile(
    isa: Isa,
    w: &PackedMatrix,
    tile: usize,
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    unpacked: &mut [u8; UNPACKED_TILE_BYTES_MAX],
    out: SharedMut<f32>,
    ldo: usize,
    col0: usize,
    mode: Output,
) {
    let nb = w.blocks();
    let slots = tile * nb * TILE..(tile + 1) * nb * TILE;
    let d = &w.d[slots.clone()];
    let col = tile * TILE;
    let live = (w.n - col).min(TILE);
    let store = |r: usize, values: [f32; TILE]| {
        let dst = out.ptr().add(r * ldo + col0 + col);
        for (j, &v) in values.iter().enumerate().take(live) {
            match mode {
                Output::Store => *dst.add(j) = v,
                Output::Accumulate => *dst.add(j) += v,
            }
        }
    };
    match &w.quants {
        Quants::Q4 { nibbles, m } => {
            let m = &m[slots.clone()];
            let packed = &nibbles[slots.start * 16..slots.end * 16];
            let bytes = nb * TILE * BLOCK;
            let weights = if rows.len() >= UNPACK_FROM_ROWS && bytes <= unpacked.len() {
                unpack_tile(packed, &mut unpacked[..bytes]);
                Q4Tile::Unpacked(&unpacked[..bytes])
            } else {
                Q4Tile::Packed(packed)
            };
            kernels::q4_rows(isa, weights, d, m, x, rows, store);
        }
        Quants::Q8 { quants } => {
            let q = &quants[slots.start * BLOCK..slots.end * BLOCK];
            kernels::q8_rows(isa, q, d, x, rows, store);
        }
    }
}

/// A 4-bit tile as the kernels read it.
#[derive(Clone, Copy)]
pub(crate) enum Q4Tile<'a> {
    /// `[blocks][TILE / 2][32]` bytes of two outputs' nibbles (see `Quants::Q4`).
    Packed(&'a [u8]),
    /// `[blocks][TILE][32]` bytes in 0..16.
    Unpacked(&'a [u8]),
}

/// Nibble pairs to bytes: each 32-byte pair gives two outputs' 32 values.
fn unpack_tile(packed: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed.len() * 2);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86-64; the lengths are checked above.
    unsafe {
        use std::arch::x86_64::*;
        let low = _mm_set1_epi8(0x0f);
        let (src, dst) = (packed.as_ptr(), out.as_mut_ptr());
        for half in 0..packed.len() / 16 {
            // Half `h` of pair `p` (bytes 16h..16h+16) feeds the same half of both outputs.
            let (pair, h) = (half / 2, half % 2);
            let v = _mm_loadu_si128(src.add(half * 16) as *const __m128i);
            let lo = _mm_and_si128(v, low);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), low);
            _mm_storeu_si128(dst.add(pair * 64 + h * 16) as *mut __m128i, lo);
            _mm_storeu_si128(dst.add(pair * 64 + 32 + h * 16) as *mut __m128i, hi);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (src, dst) in packed.chunks_exact(32).zip(out.chunks_exact_mut(64)) {
        for i in 0..32 {
            dst[i] = src[i] & 0x0f;
            dst[32 + i] = src[i] >> 4;
        }
    }
}

mod kernels;

#[cfg(test)]
mod tests;
