//! K-quant matrices as their files store them, close to their own size in memory: Q4_K (4.75
//! bits a weight here, 4.5 in the file), Q5_K and Q6_K (6.6 bits, 6.56 in the file). Q4_K and
//! Q6_K tiles run as stored, against activations on one scale per super-block (see the
//! kernels); a Q5_K tile is expanded as it runs into the per-block scales of the 4-bit kernels
//! (each 32-weight block is `d * sc * q - dmin * m`, exactly the 4-bit form). The scales are
//! the products GGML's own dequantization computes, in f32.

use super::{f16_at, PackedMatrix, Quants, ShapeError, BLOCK, SUPER_BLOCK, TILE};
use crate::isa::Isa;

/// Bytes of one GGML Q4_K super-block: f16 `d` and `dmin`, 12 bytes of 6-bit scales and mins,
/// 128 bytes of nibbles.
const Q4_K_BYTES: usize = 144;
/// Bytes of one GGML Q6_K super-block: 128 bytes of low nibbles, 64 of high bit pairs, 16
/// signed scales, f16 `d`.
const Q6_K_BYTES: usize = 210;
/// Blocks of 32 per super-block.
const BLOCKS_PER_SUPER: usize = SUPER_BLOCK / BLOCK;

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

/// A 6-bit quant from its low nibble and the high-bits byte of its tile position (`c`: the
/// output's place in the tile).
pub(super) fn six_bits(nibble: u8, high: u8, c: usize) -> u8 {
    nibble | (((high >> (2 * c)) & 3) << 4)
}

impl PackedMatrix {
    /// An empty K-quant matrix of `n` outputs (`k` a whole number of super-blocks checked).
    fn empty_k(n: usize, k: usize, quants: Quants) -> Self {
        let tiles = n.div_ceil(TILE);
        Self {
            n,
            k,
            d: vec![0.0; tiles * (k / SUPER_BLOCK) * TILE],
            quants,
        }
    }

    /// Where the `d` of super-block `sb` of weight row `row` goes.
    fn super_slot(&self, row: usize, sb: usize) -> usize {
        ((row / TILE) * (self.k / SUPER_BLOCK) + sb) * TILE + row % TILE
    }

    /// Writes block `b` of weight row `row`'s 4-bit quants (element order) into `nibbles`.
    fn put_nibbles(&self, nibbles: &mut [u8], row: usize, b: usize, quants: &[u8; BLOCK]) {
        let (pair, high) = ((row % TILE) / 2, row % 2 == 1);
        let base = (((row / TILE) * self.blocks() + b) * (TILE / 2) + pair) * BLOCK;
        for (e, &q) in quants.iter().enumerate() {
            nibbles[base + e] |= if high { (q & 0x0f) << 4 } else { q & 0x0f };
        }
    }

    /// Repacks GGML Q4_K data of a `[n, k]` matrix, keeping its 6-bit scales and mins.
    pub fn from_q4_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::from_scaled_k(bytes, n, k, false)
    }

    /// Repacks GGML Q6_K data of a `[n, k]` matrix, keeping its 6-bit quants and 8-bit scales.
    pub fn from_q6_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), Q6_K_BYTES, SUPER_BLOCK)?;
        let tiles = n.div_ceil(TILE);
        let slots = tiles * TILE * (k / BLOCK);
        let mut m = Self::empty_k(
            n,
            k,
            Quants::Q6K {
                nibbles: vec![0; slots * BLOCK / 2],
                high: vec![0; tiles * (k / BLOCK) * BLOCK],
                scales: vec![0; slots * 2],
            },
        );
        let per_row = k / SUPER_BLOCK;
        let (mut nibbles, mut high, mut scales) = match &mut m.quants {
            Quants::Q6K {
                nibbles,
                high,
                scales,
            } => (
                std::mem::take(nibbles),
                std::mem::take(high),
                std::mem::take(scales),
            ),
            _ => unreachable!(),
        };
        for (i, sb) in bytes.chunks_exact(Q6_K_BYTES).enumerate() {
            let (row, s) = (i / per_row, i % per_row);
            let (ql, qh, sc) = (&sb[..128], &sb[128..192], &sb[192..208]);
            let at = m.super_slot(row, s);
            m.d[at] = f16_at(sb, 208);
            // Element e of the super-block: half n = e / 128, group g = (e % 128) / 32, l = e % 32:
            // low nibble in ql[64n + l + 32 (g % 2)] (high half for g >= 2), high bits
            // (qh[32n + l] >> 2g) & 3, scale sc[e / 16].
            let quant = |e: usize| {
                let (n, g, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = (ql[64 * n + l + 32 * (g % 2)] >> (4 * (g / 2))) & 0x0f;
                let top = (qh[32 * n + l] >> (2 * g)) & 3;
                (low, top)
            };
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let slot = m.slot(row, b);
                let mut low = [0u8; BLOCK];
                let plane = ((row / TILE) * m.blocks() + b) * BLOCK;
                for (e, low) in low.iter_mut().enumerate() {
                    let (l, top) = quant(j * BLOCK + e);
                    *low = l;
                    high[plane + e] |= top << (2 * (row % TILE));
                }
                m.put_nibbles(&mut nibbles, row, b, &low);
                scales[2 * slot] = sc[2 * j] as i8;
                scales[2 * slot + 1] = sc[2 * j + 1] as i8;
            }
        }
        m.quants = Quants::Q6K {
            nibbles,
            high,
            scales,
        };
        Ok(m)
    }
}

/// The range of tile `tile`'s per-super-block values (`d`, `dmin`): `[super-blocks][TILE]`.
pub(super) fn super_slots(w: &PackedMatrix, tile: usize) -> std::ops::Range<usize> {
    let per_row = w.k / SUPER_BLOCK;
    tile * per_row * TILE..(tile + 1) * per_row * TILE
}

/// The 6-bit scales and mins per block and `dmin` per super-block of a Q4_K or Q5_K matrix.
fn k_scales(w: &PackedMatrix) -> (&[u8], &[u8], &[f32]) {
    match &w.quants {
        Quants::Q4K {
            scales, mins, dmin, ..
        }
        | Quants::Q5K {
            scales, mins, dmin, ..
        } => (scales, mins, dmin),
        _ => unreachable!("a Q4_K or Q5_K matrix"),
    }
}

/// Block `b` of row `row` of a Q4_K or Q5_K matrix: its scale `d * sc` and offset
/// `-dmin * m`.
pub(super) fn k_block_scales(w: &PackedMatrix, row: usize, b: usize) -> (f32, f32) {
    let (scales, mins, dmin) = k_scales(w);
    let (slot, at) = (w.slot(row, b), w.super_slot(row, b / BLOCKS_PER_SUPER));
    (
        w.d[at] * scales[slot] as f32,
        -(dmin[at] * mins[slot] as f32),
    )
}

/// Block `b` of row `row` of a Q6_K matrix: the scales `d * sc` of its two halves.
pub(super) fn q6k_block_scales(w: &PackedMatrix, row: usize, b: usize) -> [f32; 2] {
    let Quants::Q6K { scales, .. } = &w.quants else {
        unreachable!("a Q6_K matrix")
    };
    let (slot, at) = (w.slot(row, b), w.super_slot(row, b / BLOCKS_PER_SUPER));
    [
        w.d[at] * scales[2 * slot] as f32,
        w.d[at] * scales[2 * slot + 1] as f32,
    ]
}

/// Tile `tile` of a Q4_K or Q5_K matrix as the 4-bit kernels read scales: `[blocks][TILE]`
/// scales into `d`, offsets into `m`.
pub(super) fn expand_q4k(w: &PackedMatrix, tile: usize, d: &mut Vec<f32>, m: &mut Vec<f32>) {
    let (scales, mins, dmin) = k_scales(w);
    let nb = w.blocks();
    let per_row = nb / BLOCKS_PER_SUPER;
    let slots = tile * nb * TILE..(tile + 1) * nb * TILE;
    d.resize(nb * TILE, 0.0);
    m.resize(nb * TILE, 0.0);
    // Super-block by super-block: eight blocks of four outputs share its four `d` and `dmin`
    // (a loop the compiler vectorizes; this runs for every tile of every product).
    let per_super = BLOCKS_PER_SUPER * TILE;
    let supers = d
        .chunks_exact_mut(per_super)
        .zip(m.chunks_exact_mut(per_super))
        .zip(scales[slots.clone()].chunks_exact(per_super))
        .zip(mins[slots].chunks_exact(per_super));
    for (s, (((d, m), sc), mn)) in supers.enumerate() {
        let at = (tile * per_row + s) * TILE;
        let (ds, dm) = (&w.d[at..at + TILE], &dmin[at..at + TILE]);
        for i in 0..per_super {
            // Rows past `n` in the last tile hold zeros: their scales are zero too.
            d[i] = ds[i % TILE] * sc[i] as f32;
            m[i] = -(dm[i % TILE] * mn[i] as f32);
        }
    }
}

/// Tile `tile` of a Q5_0, Q5_1 or Q5_K matrix unpacked to bytes in 0..32 (`[blocks][TILE]
/// [32]`), as the 4-bit kernels read an unpacked tile (the products stay far from `i16`'s
/// limit: 31 * 127 * 2).
pub(super) fn expand_five_bits(isa: Isa, w: &PackedMatrix, tile: usize, out: &mut Vec<u8>) {
    let (nibbles, high) = match &w.quants {
        Quants::Q5 { nibbles, high, .. } | Quants::Q5K { nibbles, high, .. } => (nibbles, high),
        _ => unreachable!("a 5-bit matrix"),
    };
    let nb = w.blocks();
    out.resize(nb * TILE * BLOCK, 0);
    for b in 0..nb {
        let plane: &[u8; BLOCK] = high[(tile * nb + b) * BLOCK..][..BLOCK]
            .try_into()
            .expect("a block of fifth bits");
        let pairs = &nibbles[(tile * nb + b) * (TILE / 2) * BLOCK..][..(TILE / 2) * BLOCK];
        let dst = &mut out[b * TILE * BLOCK..(b + 1) * TILE * BLOCK];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `expand_q6k`.
            Isa::Avx2 | Isa::Avx512Vnni => unsafe { five_bit_block_avx2(pairs, plane, dst) },
            _ => {
                for c in 0..TILE {
                    let pair = &pairs[(c / 2) * BLOCK..(c / 2 + 1) * BLOCK];
                    let shift = if c % 2 == 1 { 4 } else { 0 };
                    for e in 0..BLOCK {
                        dst[c * BLOCK + e] =
                            ((pair[e] >> shift) & 0x0f) | (((plane[e] >> c) & 1) << 4);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn five_bit_block_avx2(pairs: &[u8], plane: &[u8; BLOCK], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let low_mask = _mm256_set1_epi8(0x0f);
    let bit = _mm256_set1_epi8(0x10);
    let plane = _mm256_loadu_si256(plane.as_ptr() as *const __m256i);
    for p in 0..TILE / 2 {
        let pair = _mm256_loadu_si256(pairs.as_ptr().add(p * BLOCK) as *const __m256i);
        let lows = [
            _mm256_and_si256(pair, low_mask),
            _mm256_and_si256(_mm256_srli_epi16(pair, 4), low_mask),
        ];
        for (half, low) in lows.into_iter().enumerate() {
            let c = 2 * p + half;
            // Bit c of each byte to bit 4: shift within 32-bit lanes, then keep bit 4 only.
            let shifted = match c {
                0 => _mm256_slli_epi32(plane, 4),
                1 => _mm256_slli_epi32(plane, 3),
                2 => _mm256_slli_epi32(plane, 2),
                _ => _mm256_slli_epi32(plane, 1),
            };
            let q = _mm256_or_si256(low, _mm256_and_si256(shifted, bit));
            _mm256_storeu_si256(out.as_mut_ptr().add(c * BLOCK) as *mut __m256i, q);
        }
    }
}

/// Writes bit 4 of block `b`'s quants of weight row `row` into the plane of fifth bits.
fn put_fifth_bits(w: &PackedMatrix, high: &mut [u8], row: usize, b: usize, quants: &[u8; BLOCK]) {
    let plane = ((row / TILE) * w.blocks() + b) * BLOCK;
    for (e, &q) in quants.iter().enumerate() {
        high[plane + e] |= ((q >> 4) & 1) << (row % TILE);
    }
}

/// Bytes of one GGML Q5_0 block: f16 `d`, 4 bytes of fifth bits, 16 of nibbles.
const Q5_0_BYTES: usize = 22;
/// Bytes of one GGML Q5_1 block: f16 `d` and `m`, 4 bytes of fifth bits, 16 of nibbles.
const Q5_1_BYTES: usize = 24;
/// Bytes of one GGML Q5_K super-block: f16 `d` and `dmin`, 12 bytes of scales and mins, 32 of
/// fifth bits, 128 of nibbles.
const Q5_K_BYTES: usize = 176;

/// A Q5_0/Q5_1 block's quants: element `j < 16` in the low nibble of byte `j` with bit `j` of
/// the 32 fifth bits, `16 + j` in its high nibble with bit `16 + j`.
fn q5_quants(qh: u32, qs: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|e| {
        let low = if e < 16 {
            qs[e] & 0x0f
        } else {
            qs[e - 16] >> 4
        };
        low | ((((qh >> e) & 1) as u8) << 4)
    })
}

impl PackedMatrix {
    fn empty_q5(n: usize, k: usize) -> Self {
        let tiles = n.div_ceil(TILE);
        let slots = tiles * TILE * (k / BLOCK);
        Self {
            n,
            k,
            d: vec![0.0; slots],
            quants: Quants::Q5 {
                nibbles: vec![0; slots * BLOCK / 2],
                high: vec![0; tiles * (k / BLOCK) * BLOCK],
                m: vec![0.0; slots],
            },
        }
    }

    fn from_q5(
        bytes: &[u8],
        n: usize,
        k: usize,
        block_bytes: usize,
        parse: impl Fn(&[u8]) -> (f32, f32, [u8; BLOCK]),
    ) -> Result<Self, ShapeError> {
        Self::check_shape(n, k, bytes.len(), block_bytes, BLOCK)?;
        let mut w = Self::empty_q5(n, k);
        let Quants::Q5 {
            nibbles: mut nib,
            high: mut hi,
            m: mut offsets,
        } = std::mem::replace(&mut w.quants, Quants::Q8 { quants: Vec::new() })
        else {
            unreachable!()
        };
        let nb = k / BLOCK;
        for (i, block) in bytes.chunks_exact(block_bytes).enumerate() {
            let (row, b) = (i / nb, i % nb);
            let (d, m, quants) = parse(block);
            let slot = w.slot(row, b);
            w.d[slot] = d;
            offsets[slot] = m;
            w.put_nibbles(&mut nib, row, b, &quants);
            put_fifth_bits(&w, &mut hi, row, b, &quants);
        }
        w.quants = Quants::Q5 {
            nibbles: nib,
            high: hi,
            m: offsets,
        };
        Ok(w)
    }

    /// Repacks GGML Q5_0 data of a `[n, k]` matrix (`w = d * (q - 16)`, q in 0..32).
    pub fn from_q5_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::from_q5(bytes, n, k, Q5_0_BYTES, |block| {
            let d = f16_at(block, 0);
            let qh = u32::from_le_bytes(block[2..6].try_into().expect("4 bytes"));
            (d, -16.0 * d, q5_quants(qh, &block[6..22]))
        })
    }

    /// Repacks GGML Q5_1 data of a `[n, k]` matrix (`w = d * q + m`, q in 0..32).
    pub fn from_q5_1(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::from_q5(bytes, n, k, Q5_1_BYTES, |block| {
            let qh = u32::from_le_bytes(block[4..8].try_into().expect("4 bytes"));
            (
                f16_at(block, 0),
                f16_at(block, 2),
                q5_quants(qh, &block[8..24]),
            )
        })
    }

    /// Repacks GGML Q5_K data of a `[n, k]` matrix: Q4_K's scales and mins, a fifth bit per
    /// weight (bit `j` of byte `l` of the 32 fifth-bit bytes: element `l` of block `j`).
    pub fn from_q5_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, ShapeError> {
        Self::from_scaled_k(bytes, n, k, true)
    }

    /// Q4_K (`fifth_bits` false) or Q5_K: the same super-block (f16 `d` and `dmin`, 12 bytes of
    /// 6-bit scales and mins, then Q5_K's 32 bytes of fifth bits, then 128 of nibbles).
    fn from_scaled_k(
        bytes: &[u8],
        n: usize,
        k: usize,
        fifth_bits: bool,
    ) -> Result<Self, ShapeError> {
        let block_bytes = if fifth_bits { Q5_K_BYTES } else { Q4_K_BYTES };
        Self::check_shape(n, k, bytes.len(), block_bytes, SUPER_BLOCK)?;
        let tiles = n.div_ceil(TILE);
        let slots = tiles * TILE * (k / BLOCK);
        let mut w = Self::empty_k(n, k, Quants::Q8 { quants: Vec::new() });
        let (mut nib, mut hi) = (
            vec![0u8; slots * BLOCK / 2],
            vec![
                0u8;
                if fifth_bits {
                    tiles * (k / BLOCK) * BLOCK
                } else {
                    0
                }
            ],
        );
        let (mut scales, mut mins) = (vec![0u8; slots], vec![0u8; slots]);
        let mut dmin = vec![0f32; w.d.len()];
        let per_row = k / SUPER_BLOCK;
        let no_fifth_bits = [0u8; BLOCK];
        for (i, sb) in bytes.chunks_exact(block_bytes).enumerate() {
            let (row, s) = (i / per_row, i % per_row);
            let at = w.super_slot(row, s);
            w.d[at] = f16_at(sb, 0);
            dmin[at] = f16_at(sb, 2);
            let packed_scales: &[u8; 12] = sb[4..16].try_into().expect("12 bytes");
            let (qh, qs) = match fifth_bits {
                true => (&sb[16..48], &sb[48..176]),
                false => (&no_fifth_bits[..], &sb[16..144]),
            };
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let slot = w.slot(row, b);
                (scales[slot], mins[slot]) = q4_k_scale_min(j, packed_scales);
                // Blocks 2i and 2i + 1 share bytes 32i..32i+32: low nibbles, then high ones.
                let src = &qs[32 * (j / 2)..32 * (j / 2 + 1)];
                let shift = if j % 2 == 1 { 4 } else { 0 };
                let quants: [u8; BLOCK] =
                    std::array::from_fn(|l| ((src[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4));
                w.put_nibbles(&mut nib, row, b, &quants);
                if fifth_bits {
                    put_fifth_bits(&w, &mut hi, row, b, &quants);
                }
            }
        }
        w.quants = match fifth_bits {
            true => Quants::Q5K {
                nibbles: nib,
                high: hi,
                scales,
                mins,
                dmin,
            },
            false => Quants::Q4K {
                nibbles: nib,
                scales,
                mins,
                dmin,
            },
        };
        Ok(w)
    }
}
