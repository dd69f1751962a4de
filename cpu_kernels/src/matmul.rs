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
//! below `i16::MAX`, Q6_K's 6-bit by 8-bit pairs at most 2 * 63 * 127, and the 8-bit path
//! multiplies `|x|` by `±w`, at most 2 * 127 * 127), so a sequence's logits do not depend on
//! what else is in the batch. Q4_K and Q6_K read the activations' super-block form for every
//! row count, the other kinds the 32-value blocks. The portable kernel mirrors
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
/// Values per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;
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
    /// Q4_K as stored: nibbles as `Q4`'s; per block (slot) its 6-bit scale and min as bytes;
    /// per (tile, super-block, output) `d` (in the matrix's `d`) and `dmin`. 4.75 bits a
    /// weight, read as stored by kernels that sum a super-block in integers.
    Q4K {
        nibbles: Vec<u8>,
        scales: Vec<u8>,
        mins: Vec<u8>,
        dmin: Vec<f32>,
    },
    /// Q6_K as stored: low 4 bits as `Q4`'s nibble pairs; the high 2 bits `[tiles][blocks]
    /// [32]`, byte `e` holding element `e` of the tile's four outputs (2 bits each, output 0
    /// lowest); per half block (16 weights) its signed 8-bit scale; per (tile, super-block,
    /// output) `d` (in the matrix's `d`). 6.6 bits a weight, read as stored (the quants
    /// rebuilt in registers) by kernels that sum a super-block in integers.
    Q6K {
        nibbles: Vec<u8>,
        high: Vec<u8>,
        scales: Vec<i8>,
    },
    /// Q5_0 and Q5_1 as stored: low 4 bits as `Q4`'s nibble pairs; the fifth bit `[tiles]
    /// [blocks][32]`, byte `e` holding element `e`'s bit of the tile's four outputs (bit `c`);
    /// scales in the matrix's `d` and offsets in `m` per block, as `Q4`. 6.25 bits a weight.
    Q5 {
        nibbles: Vec<u8>,
        high: Vec<u8>,
        m: Vec<f32>,
    },
    /// Q5_K as stored: nibbles and fifth bits as `Q5`'s, scales and mins as `Q4K`'s. 5.75 bits
    /// a weight (the file: 5.5).
    Q5K {
        nibbles: Vec<u8>,
        high: Vec<u8>,
        scales: Vec<u8>,
        mins: Vec<u8>,
        dmin: Vec<f32>,
    },
}

/// A `[n, k]` weight matrix (n outputs, k inputs) in the kernels' layout.
pub struct PackedMatrix {
    /// Outputs, as in the file.
    n: usize,
    k: usize,
    /// `[tiles][blocks][TILE]` scales (`Q4`, `Q8`), or `[tiles][super-blocks][TILE]` (`Q4K`,
    /// `Q6K`).
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

impl PackedMatrix {
    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether products read the activations' super-block form (Q4_K, Q6_K): rows quantized
    /// with that form (see [`QuantizedRows::with_forms`]).
    pub fn reads_super_blocks(&self) -> bool {
        matches!(self.quants, Quants::Q4K { .. } | Quants::Q6K { .. })
    }

    /// Whether the weights are 4-bit (as stored, or Q4_K).
    pub fn is_4bit(&self) -> bool {
        matches!(self.quants, Quants::Q4 { .. } | Quants::Q4K { .. })
    }

    /// Bytes of weight data, scales included.
    pub fn bytes(&self) -> usize {
        let quants = match &self.quants {
            Quants::Q4 { nibbles, m } => nibbles.len() + m.len() * 4,
            Quants::Q8 { quants } => quants.len(),
            Quants::Q4K {
                nibbles,
                scales,
                mins,
                dmin,
            } => nibbles.len() + scales.len() + mins.len() + dmin.len() * 4,
            Quants::Q6K {
                nibbles,
                high,
                scales,
            } => nibbles.len() + high.len() + scales.len(),
            Quants::Q5 { nibbles, high, m } => nibbles.len() + high.len() + m.len() * 4,
            Quants::Q5K {
                nibbles,
                high,
                scales,
                mins,
                dmin,
            } => nibbles.len() + high.len() + scales.len() + mins.len() + dmin.len() * 4,
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

    /// Stacks matrices of the same kind and inputs into one (rows of `parts[0]` first): fused
    /// projections (Q, K and V; gate and up) then cost one parallel operation instead of
    /// several. `None` if the kinds or input sizes differ, or a part's rows are not whole tiles.
    pub fn stack(parts: &[&PackedMatrix]) -> Option<Self> {
        let first = parts.first()?;
        let kind = std::mem::discriminant(&first.quants);
        let same_kind = parts
            .iter()
            .all(|p| std::mem::discriminant(&p.quants) == kind);
        if !same_kind || parts.iter().any(|p| p.k != first.k || p.n % TILE != 0) {
            return None;
        }
        // Every per-tile array is tile-major: stacking appends them part after part.
        let mut d = Vec::new();
        let mut quants = first.quants.empty_like();
        for part in parts {
            d.extend_from_slice(&part.d);
            quants.append(&part.quants);
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
        let nibble = |nibbles: &[u8], b: usize, e: usize| {
            let pair = ((row / TILE) * self.blocks() + b) * (TILE / 2) + (row % TILE) / 2;
            let shift = if row % 2 == 1 { 4 } else { 0 };
            (nibbles[pair * BLOCK + e] >> shift) & 0x0f
        };
        for b in 0..self.blocks() {
            let at = self.slot(row, b);
            let dst = &mut out[b * BLOCK..(b + 1) * BLOCK];
            match &self.quants {
                Quants::Q4 { nibbles, m } => {
                    for (e, o) in dst.iter_mut().enumerate() {
                        *o = self.d[at] * nibble(nibbles, b, e) as f32 + m[at];
                    }
                }
                Quants::Q8 { quants } => {
                    for (o, &q) in dst.iter_mut().zip(&quants[at * BLOCK..(at + 1) * BLOCK]) {
                        *o = self.d[at] * q as f32;
                    }
                }
                Quants::Q4K { nibbles, .. } => {
                    let (d, m) = kquants::k_block_scales(self, row, b);
                    for (e, o) in dst.iter_mut().enumerate() {
                        *o = d * nibble(nibbles, b, e) as f32 + m;
                    }
                }
                Quants::Q5 { nibbles, high, m } => {
                    let high = &high[((row / TILE) * self.blocks() + b) * BLOCK..][..BLOCK];
                    for (e, o) in dst.iter_mut().enumerate() {
                        let q = nibble(nibbles, b, e) | (((high[e] >> (row % TILE)) & 1) << 4);
                        *o = self.d[at] * q as f32 + m[at];
                    }
                }
                Quants::Q5K { nibbles, high, .. } => {
                    let (d, m) = kquants::k_block_scales(self, row, b);
                    let high = &high[((row / TILE) * self.blocks() + b) * BLOCK..][..BLOCK];
                    for (e, o) in dst.iter_mut().enumerate() {
                        let q = nibble(nibbles, b, e) | (((high[e] >> (row % TILE)) & 1) << 4);
                        *o = d * q as f32 + m;
                    }
                }
                Quants::Q6K { nibbles, high, .. } => {
                    let halves = kquants::q6k_block_scales(self, row, b);
                    let high = &high[((row / TILE) * self.blocks() + b) * BLOCK..][..BLOCK];
                    for (e, o) in dst.iter_mut().enumerate() {
                        let q = kquants::six_bits(nibble(nibbles, b, e), high[e], row % TILE);
                        *o = halves[e / 16] * (q as i32 - 32) as f32;
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
    assert!(
        !w.reads_super_blocks() || x.has_super_blocks(),
        "a K-quant product needs rows with their super-block form"
    );
    if rows == 0 {
        return;
    }
    let out = SharedMut::new(out);
    let tiles = w.tiles();
    // Several chunks per thread balance uneven progress; each chunk still covers enough tiles
    // that the dispatch cost is small against the work.
    let grain = parallel::grain_for(tiles, 4);
    parallel::for_each_chunk(tiles, grain, |_, tile_range| {
        let mut scratch = TileScratch::default();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + ROW_BLOCK).min(rows);
            for tile in tile_range.clone() {
                // SAFETY: this work item alone owns columns `tile * TILE ..` of every row.
                unsafe { run_tile(isa, w, tile, x, r0..r1, &mut scratch, out, ldo, col0, mode) };
            }
            r0 = r1;
        }
    });
}

/// Largest inner size whose unpacked 4-bit tile is kept for the rows that pass over it
/// (bigger ones stream packed nibbles for every row, which is correct but slower).
const UNPACKED_TILE_BYTES_MAX: usize = 16 * 1024;

/// A work item's buffers for one tile at a time: the 4-bit tile unpacked to bytes, and the
/// Q5_K tiles expanded to the kernels' per-block scales.
#[derive(Default)]
struct TileScratch {
    unpacked: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

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
    scratch: &mut TileScratch,
    out: SharedMut<f32>,
    ldo: usize,
    col0: usize,
    mode: Output,
) {
    let nb = w.blocks();
    let slots = tile * nb * TILE..(tile + 1) * nb * TILE;
    // Per-block scales of the kinds that keep them per block (the K-quants expand theirs).
    let d = match &w.quants {
        Quants::Q4 { .. } | Quants::Q8 { .. } | Quants::Q5 { .. } => &w.d[slots.clone()],
        Quants::Q4K { .. } | Quants::Q6K { .. } | Quants::Q5K { .. } => &[][..],
    };
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
            let weights = q4_tile(packed, rows.len(), &mut scratch.unpacked);
            kernels::q4_rows(isa, weights, d, m, x, rows, store);
        }
        Quants::Q8 { quants } => {
            let q = &quants[slots.start * BLOCK..slots.end * BLOCK];
            kernels::q8_rows(isa, q, d, x, rows, store);
        }
        Quants::Q4K {
            nibbles,
            scales,
            mins,
            dmin,
        } => {
            // Always packed and against the rows' super-block form, whatever the number of
            // rows: a row's outputs must not depend on the batch.
            let packed = &nibbles[slots.start * 16..slots.end * 16];
            let supers = kquants::super_slots(w, tile);
            let k = kernels::KScales {
                scales: &scales[slots.clone()],
                mins: &mins[slots.clone()],
            };
            let (ds, dm) = (&w.d[supers.clone()], &dmin[supers]);
            kernels::q4k_rows(isa, packed, ds, dm, k, x, rows, store);
        }
        Quants::Q6K {
            nibbles,
            high,
            scales,
        } => {
            // As Q4_K: in registers, against the super-block form, for every row count.
            let packed = kernels::Q6Tile {
                pairs: &nibbles[slots.start * 16..slots.end * 16],
                plane: &high[tile * nb * BLOCK..(tile + 1) * nb * BLOCK],
                scales: &scales[slots.start * 2..slots.end * 2],
                d: &w.d[kquants::super_slots(w, tile)],
            };
            kernels::q6k_rows(isa, packed, x, rows, store);
        }
        Quants::Q5 { m, .. } => {
            kquants::expand_five_bits(isa, w, tile, &mut scratch.unpacked);
            let weights = Q4Tile::Unpacked(&scratch.unpacked);
            kernels::q4_rows(isa, weights, d, &m[slots.clone()], x, rows, store);
        }
        Quants::Q5K { .. } => {
            kquants::expand_q4k(w, tile, &mut scratch.d, &mut scratch.m);
            kquants::expand_five_bits(isa, w, tile, &mut scratch.unpacked);
            let weights = Q4Tile::Unpacked(&scratch.unpacked);
            kernels::q4_rows(isa, weights, &scratch.d, &scratch.m, x, rows, store);
        }
    }
}

/// A 4-bit tile for `rows` rows: unpacked to bytes once when several rows reuse it (and it
/// fits), else read packed.
fn q4_tile<'a>(packed: &'a [u8], rows: usize, unpacked: &'a mut Vec<u8>) -> Q4Tile<'a> {
    let bytes = packed.len() * 2;
    if rows >= UNPACK_FROM_ROWS && bytes <= UNPACKED_TILE_BYTES_MAX {
        unpacked.resize(bytes, 0);
        unpack_tile(packed, unpacked);
        Q4Tile::Unpacked(unpacked)
    } else {
        Q4Tile::Packed(packed)
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

mod blocks;
mod kernels;
mod kinds;
mod kquants;

#[cfg(test)]
mod tests;
