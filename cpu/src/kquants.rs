//! K-quant weight rows (GGUF Q4_K, Q5_K, Q6_K: super-blocks of 256 weights with
//! per-sub-block scales) against activations quantized to [`BlockQ8K`].
//!
//! The arithmetic is ggml's: activations are quantized by `quantize_row_q8_K_ref`
//! (one f32 scale per 256 values, sums of each 16 kept for the Q4_K/Q5_K minimums
//! and Q6_K's offset of 32), products are exact integer sums per super-block, and the
//! AVX2 kernels follow `ggml_vec_dot_q{4,5,6}_K_q8_K`'s AVX2 code (the portable ones
//! its generic code), so that each super-block's float steps are the same. The
//! AVX-512 prompt tiles (Q4_K, Q6_K) fold their integer sums to the AVX2 kernels'
//! lanes before those float steps, so every path gives a row the same bits.

use std::sync::atomic::{AtomicBool, Ordering};

/// Weights per super-block.
pub const QK_K: usize = 256;

/// One super-block of 256 quantized activations: `x[i] ≈ d * qs[i]`, and `bsums[k]`
/// the sum of `qs[16k..16k + 16]` (ggml's `block_q8_K`), plus `pair_sums[k]` =
/// `bsums[2k] + bsums[2k + 1]`, the sum over Q4_K/Q5_K sub-block `k`, which their
/// kernels would otherwise add up again for every weight row.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
    pub pair_sums: [i16; QK_K / 32],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            pair_sums: [0; QK_K / 32],
        }
    }
}

/// The K-quant block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFormat {
    /// f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (8 sub-blocks of 32),
    /// 128 bytes of nibbles: weight = d * scale * q - dmin * min.
    Q4K,
    /// As Q4K plus 32 bytes holding each weight's fifth bit.
    Q5K,
    /// 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales
    /// (sub-blocks of 16), f16 d: weight = d * scale * (q - 32).
    Q6K,
}

impl KFormat {
    /// Bytes of one super-block of 256 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            KFormat::Q4K => 144,
            KFormat::Q5K => 176,
            KFormat::Q6K => 210,
        }
    }
}

/// ggml's `nearest_int`: rounds to nearest, ties to even, for |v| < 2^22.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Quantizes `x` (a multiple of 256 values) into `out`, as ggml's
/// `quantize_row_q8_K_ref`: the scale comes from the value of largest magnitude,
/// with its sign (so that value maps to -127 exactly).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (src, dst) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in src {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *dst = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in dst.qs.iter_mut().zip(src) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (sum, group) in dst.bsums.iter_mut().zip(dst.qs.chunks_exact(16)) {
            *sum = group.iter().map(|&q| q as i16).sum();
        }
        for (sum, pair) in dst.pair_sums.iter_mut().zip(dst.bsums.chunks_exact(2)) {
            *sum = pair[0] + pair[1];
        }
        dst.d = 1.0 / iscale;
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K super-block from its 12
/// packed bytes, as ggml unpacks them: the scales in the first 8 bytes of the
/// result, the mins in the last 8.
#[inline(always)]
fn scales_and_mins(packed: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |k: usize| {
        u32::from_le_bytes([
            packed[4 * k],
            packed[4 * k + 1],
            packed[4 * k + 2],
            packed[4 * k + 3],
        ])
    };
    let mut u = [word(0), word(1), word(2), 0];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    let mut out = [0u8; 16];
    for (k, w) in u.iter().enumerate() {
        out[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The 256 unsigned quants of a Q4_K (0..15) or Q5_K (0..31) super-block, in
/// element order: each 64 elements are 32 low nibbles then 32 high nibbles of the
/// same 32 bytes; Q5_K's fifth bit of element `64j + l` is bit `2j` of `qh[l]`, of
/// element `64j + 32 + l` bit `2j + 1`.
fn q45k_values(format: KFormat, b: &[u8]) -> [u8; QK_K] {
    let (qs, qh) = match format {
        KFormat::Q4K => (&b[16..144], None),
        _ => (&b[48..176], Some(&b[16..48])),
    };
    let mut out = [0u8; QK_K];
    for j in 0..4 {
        for l in 0..32 {
            let byte = qs[32 * j + l];
            let (mut lo, mut hi) = (byte & 0x0F, byte >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * j)) & 1) << 4;
                hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
            }
            out[64 * j + l] = lo;
            out[64 * j + 32 + l] = hi;
        }
    }
    out
}

/// The 256 signed quants (-32..31) of a Q6_K super-block in element order.
fn q6k_values(b: &[u8]) -> [i8; QK_K] {
    let (ql, qh) = (&b[..128], &b[128..192]);
    let mut out = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh, out) = (&ql[64 * half..], &qh[32 * half..], &mut out[128 * half..]);
        for l in 0..32 {
            out[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    out
}

/// Dequantizes one row (whole super-blocks) into `out`.
pub fn dequantize_row(format: KFormat, row: &[u8], out: &mut [f32]) {
    for (b, dst) in row
        .chunks_exact(format.block_bytes())
        .zip(out.chunks_exact_mut(QK_K))
    {
        match format {
            KFormat::Q4K | KFormat::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let sm = scales_and_mins(&b[4..16]);
                let q = q45k_values(format, b);
                for (k, (dst, q)) in dst.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                    let (scale, min) = (d * sm[k] as f32, dmin * sm[8 + k] as f32);
                    for (v, &q) in dst.iter_mut().zip(q) {
                        *v = scale * q as f32 - min;
                    }
                }
            }
            KFormat::Q6K => {
                let d = f16_at(b, 208);
                let q = q6k_values(b);
                for (k, (dst, q)) in dst.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                    let scale = d * b[192 + k] as i8 as f32;
                    for (v, &q) in dst.iter_mut().zip(q) {
                        *v = scale * q as f32;
                    }
                }
            }
        }
    }
}

/// One weight row · one activation row, on AVX2 when `avx2` (which must come from
/// [`super::kernels::has_avx2`]), else portable.
#[inline]
pub fn dot(format: KFormat, w: &[u8], x: &[BlockQ8K], avx2: bool) -> f32 {
    debug_assert_eq!(w.len(), x.len() * format.block_bytes());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when AVX2, FMA and F16C were detected, and
        // `has_vnni` checks AVX-VNNI; the row holds one super-block per activation
        // block (asserted by the callers).
        return unsafe {
            if super::kernels::has_vnni() {
                x86::dot_vnni(format, w, x)
            } else {
                x86::dot_avx2(format, w, x)
            }
        };
    }
    let _ = avx2;
    dot_scalar(format, w, x)
}

/// Activation rows that share one pass over a weight row in [`dot_rows`].
pub const ROW_TILE: usize = 4;

/// Activation rows that share one pass over a weight row in [`dot_rows_wide`].
pub const WIDE_ROW_TILE: usize = 8;

/// One super-block of two activation rows (`2p` and `2p + 1` of a
/// [`WIDE_ROW_TILE`]), side by side as the AVX-512 kernels' float steps read them:
/// made once per product by [`pair_blocks`] instead of once per weight row.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct PairBlock {
    /// The first row's scale in lanes 0..8, the second's in 8..16.
    d: [f32; 16],
    /// Minus each scale, in 4 lanes each (the Q4_K minimums' factor).
    neg_d: [f32; 8],
    /// Each row's [`BlockQ8K::pair_sums`] (Q4_K).
    pair_sums: [i16; 16],
    /// Each row's [`BlockQ8K::bsums`] (Q6_K).
    bsums: [i16; 32],
}

/// Appends the [`PairBlock`]s of the rows `x` to `out`: super-block by super-block,
/// pair by pair, as [`dot_rows_wide`] reads them.
pub fn pair_blocks(x: [&[BlockQ8K]; WIDE_ROW_TILE], out: &mut Vec<PairBlock>) {
    for i in 0..x[0].len() {
        for pair in x.chunks_exact(2) {
            let (a, b) = (&pair[0][i], &pair[1][i]);
            let mut block = PairBlock::default();
            block.d[..8].fill(a.d);
            block.d[8..].fill(b.d);
            block.neg_d[..4].fill(-a.d);
            block.neg_d[4..].fill(-b.d);
            block.pair_sums[..8].copy_from_slice(&a.pair_sums);
            block.pair_sums[8..].copy_from_slice(&b.pair_sums);
            block.bsums[..16].copy_from_slice(&a.bsums);
            block.bsums[16..].copy_from_slice(&b.bsums);
            out.push(block);
        }
    }
}

/// Whether [`dot_rows_wide`] runs its own kernel for `format` on this CPU (else it
/// is two [`dot_rows`]).
pub fn has_wide_tile(format: KFormat) -> bool {
    format != KFormat::Q5K && has_avx512()
}

/// One weight row · [`WIDE_ROW_TILE`] activation rows, `pairs` their
/// [`pair_blocks`]: `out[r] = dot(format, w, x[r])`, bit for bit, on AVX-512 where
/// [`has_wide_tile`]. `avx2` as for [`dot`].
#[inline]
pub fn dot_rows_wide(
    format: KFormat,
    w: &[u8],
    x: [&[BlockQ8K]; WIDE_ROW_TILE],
    pairs: &[PairBlock],
    avx2: bool,
) -> [f32; WIDE_ROW_TILE] {
    debug_assert!(x.iter().all(|x| w.len() == x.len() * format.block_bytes()));
    assert_eq!(pairs.len(), x[0].len() * WIDE_ROW_TILE / 2, "pair blocks");
    #[cfg(target_arch = "x86_64")]
    if avx2 && has_wide_tile(format) {
        // SAFETY: `avx2` comes from `has_avx2` and `has_wide_tile` checked AVX-512
        // F, BW and VNNI and the format; every row holds one block per super-block,
        // and `pairs` one block per super-block and pair (asserted above).
        return unsafe { x86::dot_rows8_avx512(format, w, x, pairs) };
    }
    let first = dot_rows(format, w, [x[0], x[1], x[2], x[3]], avx2);
    let second = dot_rows(format, w, [x[4], x[5], x[6], x[7]], avx2);
    std::array::from_fn(|r| if r < 4 { first[r] } else { second[r - 4] })
}

/// Whether [`dot_rows`] may use the 512-bit kernels (see [`allow_avx512`]).
static AVX512_ALLOWED: AtomicBool = AtomicBool::new(true);

/// Lets [`dot_rows`] use its AVX-512 kernels where the CPU has them (the default), or
/// keeps it on the 256-bit ones, so that benchmarks can compare both in one process.
/// The results are the same bits either way.
pub fn allow_avx512(allowed: bool) {
    AVX512_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether the Q4_K/Q6_K prompt tiles run on AVX-512 (F, BW and VNNI; only where
/// AVX2, FMA and F16C were found too, which their float steps use).
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        AVX512_ALLOWED.load(Ordering::Relaxed)
            && super::kernels::has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One weight row · [`ROW_TILE`] activation rows: `out[r] = dot(format, w, x[r])`,
/// bit for bit, but each super-block's scales and quants are unpacked once for all
/// rows (prefill). `avx2` as for [`dot`].
#[inline]
pub fn dot_rows(
    format: KFormat,
    w: &[u8],
    x: [&[BlockQ8K]; ROW_TILE],
    avx2: bool,
) -> [f32; ROW_TILE] {
    debug_assert!(x.iter().all(|x| w.len() == x.len() * format.block_bytes()));
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: as in `dot`; every activation row holds one block per super-block;
        // `has_avx512` checks AVX-512 F, BW and VNNI.
        return unsafe {
            if format != KFormat::Q5K && has_avx512() {
                x86::dot_rows_avx512(format, w, x)
            } else if super::kernels::has_vnni() {
                x86::dot_rows_vnni(format, w, x)
            } else {
                x86::dot_rows_avx2(format, w, x)
            }
        };
    }
    let _ = avx2;
    x.map(|x| dot_scalar(format, w, x))
}

/// The portable dot product, in the order of ggml's generic code: per super-block,
/// eight integer lanes (element index mod 8) of `scale * q * x`, then eight float
/// lanes across super-blocks; the minimums' term is one float sum.
pub fn dot_scalar(format: KFormat, w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut total = 0f32;
    for (b, xb) in w.chunks_exact(format.block_bytes()).zip(x) {
        let mut sums = [0i32; 8];
        let d;
        match format {
            KFormat::Q4K | KFormat::Q5K => {
                let sm = scales_and_mins(&b[4..16]);
                let q = q45k_values(format, b);
                for (k, (q, qx)) in q.chunks_exact(32).zip(xb.qs.chunks_exact(32)).enumerate() {
                    for (l, (&q, &qx)) in q.iter().zip(qx).enumerate() {
                        sums[l % 8] += sm[k] as i32 * (q as i32 * qx as i32);
                    }
                }
                let mins: i32 = xb
                    .bsums
                    .iter()
                    .enumerate()
                    .map(|(j, &s)| s as i32 * sm[8 + j / 2] as i32)
                    .sum();
                d = f16_at(b, 0) * xb.d;
                total -= f16_at(b, 2) * xb.d * mins as f32;
            }
            KFormat::Q6K => {
                let q = q6k_values(b);
                for (k, (q, qx)) in q.chunks_exact(16).zip(xb.qs.chunks_exact(16)).enumerate() {
                    let scale = b[192 + k] as i8 as i32;
                    for (l, (&q, &qx)) in q.iter().zip(qx).enumerate() {
                        sums[l % 8] += scale * (q as i32 * qx as i32);
                    }
                }
                d = f16_at(b, 208) * xb.d;
            }
        }
        for (lane, s) in lanes.iter_mut().zip(sums) {
            *lane += d * s as f32;
        }
    }
    total + lanes.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 dot products after ggml's `ggml_vec_dot_q{4,5,6}_K_q8_K`.
    use super::{BlockQ8K, QK_K};
    use std::arch::x86_64::*;

    /// How far ahead (bytes) the weight row is prefetched: the same distance as the
    /// 32-block kernels (see `kernels::PREFETCH_AHEAD`), which keeps the memory-mapped
    /// pages streaming across page boundaries.
    const PREFETCH_AHEAD: usize = 3072;

    /// The f16 at `p` as f32, converted with F16C in the kernel itself (`half`'s
    /// conversion checks the CPU's features at every call).
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        crate::kernels::x86::f16(p)
    }

    #[inline(always)]
    unsafe fn prefetch(b: *const u8, bytes: usize) {
        // Prefetching never faults, also past the end of the mapping.
        let mut at = 0;
        while at < bytes {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH_AHEAD + at) as *const i8);
            at += 64;
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Σ over Q4_K/Q5_K sub-blocks of min * bsum pairs, as 4 i32 lanes (ggml's
    /// `prod`), and the 8 scales widened to 16 bits in both halves of a register.
    #[inline(always)]
    unsafe fn mins_and_scales(b: *const u8, xb: &BlockQ8K) -> (__m128i, __m256i) {
        let (scales, mins) = unpack_scales(b);
        let q8s = _mm_loadu_si128(xb.pair_sums.as_ptr() as *const __m128i);
        (_mm_madd_epi16(mins, q8s), scales)
    }

    /// A Q4_K/Q5_K super-block's 8 scales widened to 16 bits in both halves of a
    /// register, and its 8 mins widened to 16 bits.
    #[inline(always)]
    unsafe fn unpack_scales(b: *const u8) -> (__m256i, __m128i) {
        let sm = super::scales_and_mins(std::slice::from_raw_parts(b.add(4), 12));
        let wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(sm.as_ptr() as *const __m128i));
        let sc = _mm256_castsi256_si128(wide);
        (_mm256_set_m128i(sc, sc), _mm256_extracti128_si256(wide, 1))
    }

    /// The 16-bit scale of sub-block `k` (0..8) in every lane.
    #[inline(always)]
    unsafe fn scale_of(scales: __m256i, k: usize) -> __m256i {
        let lo = (2 * k) as i8;
        _mm256_shuffle_epi8(
            scales,
            _mm256_set1_epi16(i16::from_le_bytes([lo as u8, lo as u8 + 1])),
        )
    }

    /// `sumi + madd(scale, products)`: with `V` one AVX-VNNI `vpdpwssd`, else `madd`
    /// and `add`. The same integers: no pair of our 16-bit products overflows 32 bits.
    #[inline(always)]
    unsafe fn scaled_add<const V: bool>(
        sumi: __m256i,
        scale: __m256i,
        products: __m256i,
    ) -> __m256i {
        if V {
            _mm256_dpwssd_avx_epi32(sumi, scale, products)
        } else {
            _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, products))
        }
    }

    /// One weight row · one activation row on the AVX2 kernels.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds one super-block per block of `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(format: super::KFormat, w: &[u8], x: &[BlockQ8K]) -> f32 {
        dot_with::<false>(format, w, x)
    }

    /// [`dot_avx2`] with AVX-VNNI: the same results, bit for bit.
    ///
    /// # Safety
    /// As for [`dot_avx2`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn dot_vnni(format: super::KFormat, w: &[u8], x: &[BlockQ8K]) -> f32 {
        dot_with::<true>(format, w, x)
    }

    #[inline(always)]
    unsafe fn dot_with<const V: bool>(format: super::KFormat, w: &[u8], x: &[BlockQ8K]) -> f32 {
        match format {
            super::KFormat::Q4K => dot_q4k::<V>(w, x),
            super::KFormat::Q5K => dot_q5k::<V>(w, x),
            super::KFormat::Q6K => dot_q6k::<V>(w, x),
        }
    }

    /// One weight row · [`super::ROW_TILE`] activation rows on the AVX2 kernels.
    ///
    /// # Safety
    /// As for [`dot_avx2`], for every row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows_avx2(
        format: super::KFormat,
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        dot_rows_with::<false>(format, w, x)
    }

    /// [`dot_rows_avx2`] with AVX-VNNI: the same results, bit for bit.
    ///
    /// # Safety
    /// As for [`dot_rows_avx2`], and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub unsafe fn dot_rows_vnni(
        format: super::KFormat,
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        dot_rows_with::<true>(format, w, x)
    }

    #[inline(always)]
    unsafe fn dot_rows_with<const V: bool>(
        format: super::KFormat,
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        match format {
            super::KFormat::Q4K => dot_rows_q4k::<V>(w, x),
            super::KFormat::Q5K => dot_rows_q5k::<V>(w, x),
            super::KFormat::Q6K => dot_rows_q6k::<V>(w, x),
        }
    }

    /// The sum of the 4 lanes of `m` as ggml adds them: (0 + 2) + (1 + 3).
    #[inline(always)]
    unsafe fn hsum4(m: __m128) -> f32 {
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
    }

    #[inline(always)]
    unsafe fn dot_q4k<const V: bool>(w: &[u8], x: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (i, xb) in x.iter().enumerate() {
            let b = w.as_ptr().add(i * 144);
            prefetch(b, 144);
            let d = xb.d * f16(b);
            let dmin = -xb.d * f16(b.add(2));
            let (prod, scales) = mins_and_scales(b, xb);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
            let (mut q4, mut q8) = (b.add(16), xb.qs.as_ptr());
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let bits = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                q8 = q8.add(64);
                sumi =
                    scaled_add::<V>(sumi, scale_of(scales, 2 * j), _mm256_maddubs_epi16(lo, q8l));
                sumi = scaled_add::<V>(
                    sumi,
                    scale_of(scales, 2 * j + 1),
                    _mm256_maddubs_epi16(hi, q8h),
                );
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) + hsum4(acc_m)
    }

    #[inline(always)]
    unsafe fn dot_q5k<const V: bool>(w: &[u8], x: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (i, xb) in x.iter().enumerate() {
            let b = w.as_ptr().add(i * 176);
            prefetch(b, 176);
            let d = xb.d * f16(b);
            let dmin = -xb.d * f16(b.add(2));
            let (prod, scales) = mins_and_scales(b, xb);
            let h = _mm_hadd_epi32(
                _mm_hadd_epi32(prod, _mm_setzero_si128()),
                _mm_setzero_si128(),
            );
            summs += dmin * _mm_cvtsi128_si32(h) as f32;
            // Shifted right by 2 per pair of sub-blocks, whose fifth bits are then
            // bits 0 and 1 of each byte.
            let mut hbits = _mm256_loadu_si256(b.add(16) as *const __m256i);
            let (mut q5, mut q8) = (b.add(48), xb.qs.as_ptr());
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let bits = _mm256_loadu_si256(q5 as *const __m256i);
                q5 = q5.add(32);
                let h0 = _mm256_and_si256(hbits, _mm256_set1_epi8(1));
                let h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 1), _mm256_set1_epi8(1));
                hbits = _mm256_srli_epi16(hbits, 2);
                let lo = _mm256_add_epi8(_mm256_and_si256(bits, m4), _mm256_slli_epi16(h0, 4));
                let hi = _mm256_add_epi8(
                    _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                    _mm256_slli_epi16(h1, 4),
                );
                let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                q8 = q8.add(64);
                sumi =
                    scaled_add::<V>(sumi, scale_of(scales, 2 * j), _mm256_maddubs_epi16(lo, q8l));
                sumi = scaled_add::<V>(
                    sumi,
                    scale_of(scales, 2 * j + 1),
                    _mm256_maddubs_epi16(hi, q8h),
                );
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) + summs
    }

    /// Q6_K's 64 weights of bytes `ql`, `ql + 32` and `qh` (the 2-bit high parts),
    /// as four vectors of 32 unsigned quants (0..63).
    #[inline(always)]
    unsafe fn q6k_quants(ql: *const u8, qh: *const u8) -> [__m256i; 4] {
        let m3 = _mm256_set1_epi8(3);
        let m15 = _mm256_set1_epi8(15);
        let bits1 = _mm256_loadu_si256(ql as *const __m256i);
        let bits2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
        let bits_h = _mm256_loadu_si256(qh as *const __m256i);
        let h0 = _mm256_slli_epi16(_mm256_and_si256(bits_h, m3), 4);
        let h1 = _mm256_slli_epi16(_mm256_and_si256(bits_h, _mm256_set1_epi8(12)), 2);
        let h2 = _mm256_and_si256(bits_h, _mm256_set1_epi8(48));
        let h3 = _mm256_srli_epi16(_mm256_and_si256(bits_h, _mm256_set1_epi8(-64)), 2);
        [
            _mm256_or_si256(_mm256_and_si256(bits1, m15), h0),
            _mm256_or_si256(_mm256_and_si256(bits2, m15), h1),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits1, 4), m15), h2),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits2, 4), m15), h3),
        ]
    }

    /// Q6_K scales 2(4j + k) and 2(4j + k) + 1 (each over 16 values), widened.
    #[inline(always)]
    unsafe fn q6k_scale(scales: __m128i, j: usize, k: usize) -> __m256i {
        let s = (8 * j + 2 * k) as u8;
        let pick = _mm_set_epi64x(i64::from_le_bytes([s + 1; 8]), i64::from_le_bytes([s; 8]));
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick))
    }

    #[inline(always)]
    unsafe fn dot_q6k<const V: bool>(w: &[u8], x: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (i, xb) in x.iter().enumerate() {
            let b = w.as_ptr().add(i * 210);
            prefetch(b, 210);
            let d = xb.d * f16(b.add(208));
            let q8sums = _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i);
            let scales = _mm_loadu_si128(b.add(192) as *const __m128i);
            // The offset of 32 of every quant, times its scale: 32 * Σ scale * bsum.
            let offset =
                _mm256_slli_epi32(_mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales)), 5);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 128 {
                let q = q6k_quants(b.add(64 * j), b.add(128 + 32 * j));
                for (k, &qk) in q.iter().enumerate() {
                    let qx =
                        _mm256_loadu_si256(xb.qs.as_ptr().add(128 * j + 32 * k) as *const __m256i);
                    sumi = scaled_add::<V>(
                        sumi,
                        q6k_scale(scales, j, k),
                        _mm256_maddubs_epi16(qk, qx),
                    );
                }
            }
            sumi = _mm256_sub_epi32(sumi, offset);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    /// The integer sums of one Q4_K/Q5_K super-block (`b`) against [`super::ROW_TILE`]
    /// activation blocks: per row the 8 lanes of [`dot_q4k`]'s `sumi`, the weights
    /// unpacked once for all rows.
    #[inline(always)]
    unsafe fn q45k_sums<const FIFTH: bool, const V: bool>(
        b: *const u8,
        xb: [&BlockQ8K; super::ROW_TILE],
        scales: __m256i,
    ) -> [__m256i; super::ROW_TILE] {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut hbits = if FIFTH {
            _mm256_loadu_si256(b.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let mut q = b.add(if FIFTH { 48 } else { 16 });
        let mut sumi = [_mm256_setzero_si256(); super::ROW_TILE];
        for j in 0..QK_K / 64 {
            let bits = _mm256_loadu_si256(q as *const __m256i);
            q = q.add(32);
            let mut lo = _mm256_and_si256(bits, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if FIFTH {
                let h0 = _mm256_and_si256(hbits, _mm256_set1_epi8(1));
                let h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 1), _mm256_set1_epi8(1));
                hbits = _mm256_srli_epi16(hbits, 2);
                lo = _mm256_add_epi8(lo, _mm256_slli_epi16(h0, 4));
                hi = _mm256_add_epi8(hi, _mm256_slli_epi16(h1, 4));
            }
            let (sl, sh) = (scale_of(scales, 2 * j), scale_of(scales, 2 * j + 1));
            for (sumi, xb) in sumi.iter_mut().zip(xb) {
                let q8 = xb.qs.as_ptr().add(64 * j);
                let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                *sumi = scaled_add::<V>(*sumi, sl, _mm256_maddubs_epi16(lo, q8l));
                *sumi = scaled_add::<V>(*sumi, sh, _mm256_maddubs_epi16(hi, q8h));
            }
        }
        sumi
    }

    /// Q4_K against [`super::ROW_TILE`] rows. Per row the float steps are those of
    /// [`dot_q4k`] in the same order (the integer sums are exact in any order), so the
    /// results are the same bits; the minimums of two rows share one register.
    #[inline(always)]
    unsafe fn dot_rows_q4k<const V: bool>(
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        const R: usize = super::ROW_TILE;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm256_setzero_ps(); R / 2];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 144);
            let (dw, dminw) = (f16(b), f16(b.add(2)));
            let (scales, mins) = unpack_scales(b);
            let xb: [&BlockQ8K; R] = std::array::from_fn(|r| x[r].get_unchecked(i));
            let sumi = q45k_sums::<false, V>(b, xb, scales);
            let mins = _mm256_set_m128i(mins, mins);
            for p in 0..R / 2 {
                let (x0, x1) = (xb[2 * p], xb[2 * p + 1]);
                let q8s = _mm256_set_m128i(
                    _mm_loadu_si128(x1.pair_sums.as_ptr() as *const __m128i),
                    _mm_loadu_si128(x0.pair_sums.as_ptr() as *const __m128i),
                );
                let dmin = _mm256_set_m128(_mm_set1_ps(-x1.d * dminw), _mm_set1_ps(-x0.d * dminw));
                let prod = _mm256_madd_epi16(mins, q8s);
                acc_m[p] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc_m[p]);
            }
            for r in 0..R {
                let d = _mm256_set1_ps(xb[r].d * dw);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for (r, out) in out.iter_mut().enumerate() {
            *out = hsum(acc[r]) + hsum4(half_of_128(acc_m[r / 2], r));
        }
        out
    }

    /// Q5_K against [`super::ROW_TILE`] rows, per row the float steps of [`dot_q5k`].
    #[inline(always)]
    unsafe fn dot_rows_q5k<const V: bool>(
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        const R: usize = super::ROW_TILE;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut summs = [0f32; R];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 176);
            let (dw, dminw) = (f16(b), f16(b.add(2)));
            let (scales, mins) = unpack_scales(b);
            let xb: [&BlockQ8K; R] = std::array::from_fn(|r| x[r].get_unchecked(i));
            let sumi = q45k_sums::<true, V>(b, xb, scales);
            for r in 0..R {
                let q8s = _mm_loadu_si128(xb[r].pair_sums.as_ptr() as *const __m128i);
                let prod = _mm_madd_epi16(mins, q8s);
                let h = _mm_hadd_epi32(
                    _mm_hadd_epi32(prod, _mm_setzero_si128()),
                    _mm_setzero_si128(),
                );
                summs[r] += -xb[r].d * dminw * _mm_cvtsi128_si32(h) as f32;
                let d = _mm256_set1_ps(xb[r].d * dw);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for (r, out) in out.iter_mut().enumerate() {
            *out = hsum(acc[r]) + summs[r];
        }
        out
    }

    /// Q6_K against [`super::ROW_TILE`] rows, per row the float steps of [`dot_q6k`].
    #[inline(always)]
    unsafe fn dot_rows_q6k<const V: bool>(
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        const R: usize = super::ROW_TILE;
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 210);
            let dw = f16(b.add(208));
            let scales = _mm_loadu_si128(b.add(192) as *const __m128i);
            let scales16 = _mm256_cvtepi8_epi16(scales);
            let mut sumi = [_mm256_setzero_si256(); R];
            for j in 0..QK_K / 128 {
                let q = q6k_quants(b.add(64 * j), b.add(128 + 32 * j));
                for (k, &qk) in q.iter().enumerate() {
                    let scale = q6k_scale(scales, j, k);
                    for (r, sumi) in sumi.iter_mut().enumerate() {
                        let q8 = x[r].get_unchecked(i).qs.as_ptr().add(128 * j + 32 * k);
                        let qx = _mm256_loadu_si256(q8 as *const __m256i);
                        *sumi = scaled_add::<V>(*sumi, scale, _mm256_maddubs_epi16(qk, qx));
                    }
                }
            }
            for r in 0..R {
                let xb = x[r].get_unchecked(i);
                let q8sums = _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i);
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales16), 5);
                let s = _mm256_sub_epi32(sumi[r], offset);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xb.d * dw), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for (out, &acc) in out.iter_mut().zip(&acc) {
            *out = hsum(acc);
        }
        out
    }

    /// One weight row · [`super::ROW_TILE`] activation rows on 512-bit registers: two
    /// sub-blocks per multiply. Each super-block's 16 integer lanes are folded to the 8
    /// lanes of the 256-bit kernels before the float steps, which are theirs, so the
    /// results are the same bits as [`dot_rows_avx2`].
    ///
    /// # Safety
    /// As for [`dot_rows_avx2`], and the CPU has AVX-512 F, BW and VNNI; `format` is
    /// Q4_K or Q6_K.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_rows_avx512(
        format: super::KFormat,
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        match format {
            super::KFormat::Q4K => dot_rows_q4k_512(w, x),
            super::KFormat::Q6K => dot_rows_q6k_512(w, x),
            super::KFormat::Q5K => unreachable!("Q5_K has no 512-bit kernel"),
        }
    }

    /// The 8 lanes of the 256-bit kernels' integer sums: the two halves added.
    #[inline(always)]
    unsafe fn fold(v: __m512i) -> __m256i {
        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1))
    }

    /// The low (`r` even) or high 128 bits of `v`.
    #[inline(always)]
    unsafe fn half_of_128(v: __m256, r: usize) -> __m128 {
        if r.is_multiple_of(2) {
            _mm256_castps256_ps128(v)
        } else {
            _mm256_extractf128_ps(v, 1)
        }
    }

    /// Shuffle control picking the 16-bit scale of Q4_K sub-block `2j` into every lane
    /// of the low 256 bits and that of `2j + 1` into the high 256 bits.
    #[inline(always)]
    unsafe fn q4k_scale_pick(j: usize) -> __m512i {
        let pick = |k: u8| i16::from_le_bytes([2 * k, 2 * k + 1]);
        let k = 2 * j as u8;
        halves(_mm256_set1_epi16(pick(k)), _mm256_set1_epi16(pick(k + 1)))
    }

    /// Q6_K's 2-bit high parts at bits `shift` of each `qh` byte (per 16-bit lane),
    /// moved to bits 4-5.
    #[inline(always)]
    unsafe fn q6k_high(qh: __m512i, shift: __m512i, m3: __m512i) -> __m512i {
        _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift), m3), 4)
    }

    /// `lo` in the low 256 bits, `hi` in the high.
    #[inline(always)]
    unsafe fn halves(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    /// Q4_K against [`super::ROW_TILE`] rows: per 32 bytes of quants, the low nibbles
    /// (sub-block 2j) in the low half of a register and the high nibbles (2j + 1) in the
    /// high half, against the 64 activations they multiply, in order.
    #[inline(always)]
    unsafe fn dot_rows_q4k_512(
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        const R: usize = super::ROW_TILE;
        let m4 = _mm512_set1_epi8(0x0F);
        let nibble_shift = halves(_mm256_setzero_si256(), _mm256_set1_epi16(4));
        // Picks the 16-bit scale of sub-block 2j (low half) and 2j + 1 (high half).
        let picks = [
            q4k_scale_pick(0),
            q4k_scale_pick(1),
            q4k_scale_pick(2),
            q4k_scale_pick(3),
        ];
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm256_setzero_ps(); R / 2];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 144);
            let (dw, dminw) = (f16(b), f16(b.add(2)));
            let (scales, mins) = unpack_scales(b);
            let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales));
            let xb: [&BlockQ8K; R] = std::array::from_fn(|r| x[r].get_unchecked(i));
            let mut sumi = [_mm512_setzero_si512(); R];
            for (j, &pick) in picks.iter().enumerate() {
                let bytes = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    b.add(16 + 32 * j) as *const __m256i
                ));
                let q = _mm512_and_si512(_mm512_srlv_epi16(bytes, nibble_shift), m4);
                let scale = _mm512_shuffle_epi8(scales, pick);
                for (sumi, xb) in sumi.iter_mut().zip(xb) {
                    let q8 = _mm512_loadu_si512(xb.qs.as_ptr().add(64 * j) as *const __m512i);
                    *sumi = dpwssd(*sumi, scale, _mm512_maddubs_epi16(q, q8));
                }
            }
            let mins = _mm256_set_m128i(mins, mins);
            for p in 0..R / 2 {
                let (x0, x1) = (xb[2 * p], xb[2 * p + 1]);
                let q8s = _mm256_set_m128i(
                    _mm_loadu_si128(x1.pair_sums.as_ptr() as *const __m128i),
                    _mm_loadu_si128(x0.pair_sums.as_ptr() as *const __m128i),
                );
                let dmin = _mm256_set_m128(_mm_set1_ps(-x1.d * dminw), _mm_set1_ps(-x0.d * dminw));
                let prod = _mm256_madd_epi16(mins, q8s);
                acc_m[p] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc_m[p]);
            }
            for r in 0..R {
                let d = _mm256_set1_ps(xb[r].d * dw);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(fold(sumi[r])), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for (r, out) in out.iter_mut().enumerate() {
            *out = hsum(acc[r]) + hsum4(half_of_128(acc_m[r / 2], r));
        }
        out
    }

    /// `acc + madd(a, b)` as one `vpdpwssd`, which the compiler would otherwise split
    /// into `vpmaddwd` and `vpaddd`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        let mut acc = acc;
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }

    /// Rows `2p` and `2p + 1` of a wide tile: [`fold`] of each, side by side.
    #[inline(always)]
    unsafe fn fold_pair(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0x44>(a, b),
            _mm512_shuffle_i64x2::<0xEE>(a, b),
        )
    }

    /// The low (`r` even) or high 256 bits of a pair's float accumulator.
    #[inline(always)]
    unsafe fn half_of(v: __m512, r: usize) -> __m256 {
        if r.is_multiple_of(2) {
            _mm512_castps512_ps256(v)
        } else {
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
        }
    }

    /// One weight row · [`super::WIDE_ROW_TILE`] activation rows: the integer sums of
    /// [`dot_rows_avx512`], and per pair of rows the float steps of two rows of the
    /// 256-bit kernels in one 512-bit register (the same operations lane by lane).
    ///
    /// # Safety
    /// As for [`dot_rows_avx512`]; `pairs` holds one [`super::PairBlock`] per
    /// super-block and pair of rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_rows8_avx512(
        format: super::KFormat,
        w: &[u8],
        x: [&[BlockQ8K]; super::WIDE_ROW_TILE],
        pairs: &[super::PairBlock],
    ) -> [f32; super::WIDE_ROW_TILE] {
        match format {
            super::KFormat::Q4K => dot_rows8_q4k(w, x, pairs),
            super::KFormat::Q6K => dot_rows8_q6k(w, x, pairs),
            super::KFormat::Q5K => unreachable!("Q5_K has no 512-bit kernel"),
        }
    }

    #[inline(always)]
    unsafe fn dot_rows8_q4k(
        w: &[u8],
        x: [&[BlockQ8K]; super::WIDE_ROW_TILE],
        pairs: &[super::PairBlock],
    ) -> [f32; super::WIDE_ROW_TILE] {
        const R: usize = super::WIDE_ROW_TILE;
        const P: usize = R / 2;
        let m4 = _mm512_set1_epi8(0x0F);
        let nibble_shift = halves(_mm256_setzero_si256(), _mm256_set1_epi16(4));
        let picks = [
            q4k_scale_pick(0),
            q4k_scale_pick(1),
            q4k_scale_pick(2),
            q4k_scale_pick(3),
        ];
        let mut acc = [_mm512_setzero_ps(); P];
        let mut acc_m = [_mm256_setzero_ps(); P];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 144);
            let (dw, dminw) = (f16(b), f16(b.add(2)));
            let (scales, mins) = unpack_scales(b);
            let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales));
            let mut sumi = [_mm512_setzero_si512(); R];
            for (j, &pick) in picks.iter().enumerate() {
                let bytes = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    b.add(16 + 32 * j) as *const __m256i
                ));
                let q = _mm512_and_si512(_mm512_srlv_epi16(bytes, nibble_shift), m4);
                let scale = _mm512_shuffle_epi8(scales, pick);
                for (r, sumi) in sumi.iter_mut().enumerate() {
                    let q8 = x[r].get_unchecked(i).qs.as_ptr().add(64 * j);
                    let q8 = _mm512_loadu_si512(q8 as *const __m512i);
                    *sumi = dpwssd(*sumi, scale, _mm512_maddubs_epi16(q, q8));
                }
            }
            let mins = _mm256_set_m128i(mins, mins);
            let (dw, dminw) = (_mm512_set1_ps(dw), _mm256_set1_ps(dminw));
            for p in 0..P {
                let pb = pairs.get_unchecked(i * P + p);
                let q8s = _mm256_load_si256(pb.pair_sums.as_ptr() as *const __m256i);
                let dmin = _mm256_mul_ps(_mm256_load_ps(pb.neg_d.as_ptr()), dminw);
                let prod = _mm256_madd_epi16(mins, q8s);
                acc_m[p] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc_m[p]);
                let s = fold_pair(sumi[2 * p], sumi[2 * p + 1]);
                let d = _mm512_mul_ps(_mm512_load_ps(pb.d.as_ptr()), dw);
                acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[p]);
            }
        }
        let mut out = [0f32; R];
        for (r, out) in out.iter_mut().enumerate() {
            *out = hsum(half_of(acc[r / 2], r)) + hsum4(half_of_128(acc_m[r / 2], r));
        }
        out
    }

    #[inline(always)]
    unsafe fn dot_rows8_q6k(
        w: &[u8],
        x: [&[BlockQ8K]; super::WIDE_ROW_TILE],
        pairs: &[super::PairBlock],
    ) -> [f32; super::WIDE_ROW_TILE] {
        const R: usize = super::WIDE_ROW_TILE;
        const P: usize = R / 2;
        let (m3, m15) = (_mm512_set1_epi8(3), _mm512_set1_epi8(15));
        let first_bits = halves(_mm256_set1_epi16(0), _mm256_set1_epi16(2));
        let last_bits = halves(_mm256_set1_epi16(4), _mm256_set1_epi16(6));
        let index = &Q6K_SCALE_INDEX;
        let mut acc = [_mm512_setzero_ps(); P];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 210);
            let dw = _mm512_set1_ps(f16(b.add(208)));
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
            let scales = _mm512_zextsi256_si512(scales16);
            let scales_twice = halves(scales16, scales16);
            let mut sumi = [_mm512_setzero_si512(); R];
            for j in 0..QK_K / 128 {
                let ql = _mm512_loadu_si512(b.add(64 * j) as *const __m512i);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    b.add(128 + 32 * j) as *const __m256i
                ));
                let q = [
                    _mm512_or_si512(_mm512_and_si512(ql, m15), q6k_high(qh, first_bits, m3)),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), m15),
                        q6k_high(qh, last_bits, m3),
                    ),
                ];
                for (h, &q) in q.iter().enumerate() {
                    let index = _mm512_loadu_si512(index[2 * j + h].as_ptr() as *const __m512i);
                    let scale = _mm512_permutexvar_epi16(index, scales);
                    for (r, sumi) in sumi.iter_mut().enumerate() {
                        let q8 = x[r].get_unchecked(i).qs.as_ptr().add(128 * j + 64 * h);
                        let qx = _mm512_loadu_si512(q8 as *const __m512i);
                        *sumi = dpwssd(*sumi, scale, _mm512_maddubs_epi16(q, qx));
                    }
                }
            }
            for p in 0..P {
                let pb = pairs.get_unchecked(i * P + p);
                let q8sums = _mm512_load_si512(pb.bsums.as_ptr() as *const __m512i);
                let offset = _mm512_slli_epi32(_mm512_madd_epi16(q8sums, scales_twice), 5);
                let s = _mm512_sub_epi32(fold_pair(sumi[2 * p], sumi[2 * p + 1]), offset);
                let d = _mm512_mul_ps(_mm512_load_ps(pb.d.as_ptr()), dw);
                acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[p]);
            }
        }
        let mut out = [0f32; R];
        for (r, out) in out.iter_mut().enumerate() {
            *out = hsum(half_of(acc[r / 2], r));
        }
        out
    }

    /// Picks Q6_K scale `first + lane / 8` for each 16-bit lane of a 512-bit register
    /// (a scale covers 16 weights: 8 lanes of pair products).
    const fn q6k_scale_index(first: i16) -> [i16; 32] {
        let mut out = [0i16; 32];
        let mut lane = 0;
        while lane < 32 {
            out[lane] = first + lane as i16 / 8;
            lane += 1;
        }
        out
    }

    static Q6K_SCALE_INDEX: [[i16; 32]; 4] = [
        q6k_scale_index(0),
        q6k_scale_index(4),
        q6k_scale_index(8),
        q6k_scale_index(12),
    ];

    /// Q6_K against [`super::ROW_TILE`] rows: per 128 weights, one register of the
    /// first 64 (low nibbles of the 64 `ql` bytes with high bits 0-1 and 2-3 of `qh`)
    /// and one of the last 64 (high nibbles, bits 4-5 and 6-7), in element order.
    #[inline(always)]
    unsafe fn dot_rows_q6k_512(
        w: &[u8],
        x: [&[BlockQ8K]; super::ROW_TILE],
    ) -> [f32; super::ROW_TILE] {
        const R: usize = super::ROW_TILE;
        let (m3, m15) = (_mm512_set1_epi8(3), _mm512_set1_epi8(15));
        let first_bits = halves(_mm256_set1_epi16(0), _mm256_set1_epi16(2));
        let last_bits = halves(_mm256_set1_epi16(4), _mm256_set1_epi16(6));
        let index = &Q6K_SCALE_INDEX;
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..x[0].len() {
            let b = w.as_ptr().add(i * 210);
            let dw = f16(b.add(208));
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
            let scales = _mm512_zextsi256_si512(scales16);
            let mut sumi = [_mm512_setzero_si512(); R];
            for j in 0..QK_K / 128 {
                let ql = _mm512_loadu_si512(b.add(64 * j) as *const __m512i);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    b.add(128 + 32 * j) as *const __m256i
                ));
                let q = [
                    _mm512_or_si512(_mm512_and_si512(ql, m15), q6k_high(qh, first_bits, m3)),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), m15),
                        q6k_high(qh, last_bits, m3),
                    ),
                ];
                for (h, &q) in q.iter().enumerate() {
                    let index = _mm512_loadu_si512(index[2 * j + h].as_ptr() as *const __m512i);
                    let scale = _mm512_permutexvar_epi16(index, scales);
                    for (r, sumi) in sumi.iter_mut().enumerate() {
                        let q8 = x[r].get_unchecked(i).qs.as_ptr().add(128 * j + 64 * h);
                        let qx = _mm512_loadu_si512(q8 as *const __m512i);
                        *sumi = dpwssd(*sumi, scale, _mm512_maddubs_epi16(q, qx));
                    }
                }
            }
            for r in 0..R {
                let xb = x[r].get_unchecked(i);
                let q8sums = _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i);
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales16), 5);
                let s = _mm256_sub_epi32(fold(sumi[r]), offset);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xb.d * dw), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for (out, &acc) in out.iter_mut().zip(&acc) {
            *out = hsum(acc);
        }
        out
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-VNNI kernels give the AVX2 kernels' bits (CI machines without AVX-VNNI
    /// run the AVX2 ones, which must agree with what was measured here).
    #[test]
    fn vnni_kernels_are_bit_identical_to_avx2() {
        if !crate::kernels::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-VNNI");
            return;
        }
        let mut seed = 99u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let blocks = 4;
        for format in [KFormat::Q4K, KFormat::Q5K, KFormat::Q6K] {
            let mut w: Vec<u8> = (0..blocks * format.block_bytes())
                .map(|_| next() as u8)
                .collect();
            let scale = half::f16::from_f32(0.001).to_le_bytes();
            for b in w.chunks_exact_mut(format.block_bytes()) {
                match format {
                    KFormat::Q4K | KFormat::Q5K => {
                        b[0..2].copy_from_slice(&scale);
                        b[2..4].copy_from_slice(&scale);
                    }
                    KFormat::Q6K => b[208..210].copy_from_slice(&scale),
                }
            }
            let x: Vec<f32> = (0..ROW_TILE * blocks * QK_K)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut q = vec![BlockQ8K::default(); ROW_TILE * blocks];
            quantize_row(&x, &mut q);
            let rows: [&[BlockQ8K]; ROW_TILE] =
                std::array::from_fn(|r| &q[r * blocks..(r + 1) * blocks]);
            // SAFETY: AVX2, FMA, F16C and AVX-VNNI were detected; every row holds one
            // block per super-block of `w`.
            let (plain, vnni, plain_rows, vnni_rows) = unsafe {
                (
                    rows.map(|x| x86::dot_avx2(format, &w, x)),
                    rows.map(|x| x86::dot_vnni(format, &w, x)),
                    x86::dot_rows_avx2(format, &w, rows),
                    x86::dot_rows_vnni(format, &w, rows),
                )
            };
            let bits = |v: [f32; ROW_TILE]| v.map(f32::to_bits);
            assert_eq!(bits(plain), bits(vnni), "{format:?} single rows");
            assert_eq!(bits(plain), bits(plain_rows), "{format:?} AVX2 tile");
            assert_eq!(bits(plain), bits(vnni_rows), "{format:?} VNNI tile");
        }
    }

    /// The AVX-512 prompt tiles give the AVX2 kernels' bits, on random quants and
    /// scales (negative Q6_K scales included) and activations of both signs.
    #[test]
    fn avx512_tiles_are_bit_identical_to_avx2() {
        if !has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512 F, BW and VNNI");
            return;
        }
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let blocks = 6;
        for format in [KFormat::Q4K, KFormat::Q6K] {
            for _ in 0..20 {
                let mut w: Vec<u8> = (0..blocks * format.block_bytes())
                    .map(|_| next() as u8)
                    .collect();
                for b in w.chunks_exact_mut(format.block_bytes()) {
                    let mut scale =
                        || half::f16::from_f32((next() % 1000) as f32 * 1e-5).to_le_bytes();
                    match format {
                        KFormat::Q4K | KFormat::Q5K => {
                            b[0..2].copy_from_slice(&scale());
                            b[2..4].copy_from_slice(&scale());
                        }
                        KFormat::Q6K => b[208..210].copy_from_slice(&scale()),
                    }
                }
                let x: Vec<f32> = (0..ROW_TILE * blocks * QK_K)
                    .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let mut q = vec![BlockQ8K::default(); ROW_TILE * blocks];
                quantize_row(&x, &mut q);
                let rows: [&[BlockQ8K]; ROW_TILE] =
                    std::array::from_fn(|r| &q[r * blocks..(r + 1) * blocks]);
                // SAFETY: AVX2, FMA, F16C and AVX-512 F, BW and VNNI were detected;
                // every row holds one block per super-block of `w`.
                let (single, tile) = unsafe {
                    (
                        rows.map(|x| x86::dot_avx2(format, &w, x)),
                        x86::dot_rows_avx512(format, &w, rows),
                    )
                };
                assert_eq!(
                    single.map(f32::to_bits),
                    tile.map(f32::to_bits),
                    "{format:?}: {single:?} vs {tile:?}"
                );
            }
        }
    }

    /// The eight-row AVX-512 tiles give the AVX2 kernels' bits too.
    #[test]
    fn wide_tiles_are_bit_identical_to_avx2() {
        if !has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512 F, BW and VNNI");
            return;
        }
        let mut seed = 13u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let blocks = 5;
        for format in [KFormat::Q4K, KFormat::Q6K] {
            for _ in 0..20 {
                let mut w: Vec<u8> = (0..blocks * format.block_bytes())
                    .map(|_| next() as u8)
                    .collect();
                for b in w.chunks_exact_mut(format.block_bytes()) {
                    let mut scale =
                        || half::f16::from_f32((next() % 1000) as f32 * 1e-5).to_le_bytes();
                    match format {
                        KFormat::Q4K | KFormat::Q5K => {
                            b[0..2].copy_from_slice(&scale());
                            b[2..4].copy_from_slice(&scale());
                        }
                        KFormat::Q6K => b[208..210].copy_from_slice(&scale()),
                    }
                }
                let x: Vec<f32> = (0..WIDE_ROW_TILE * blocks * QK_K)
                    .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let mut q = vec![BlockQ8K::default(); WIDE_ROW_TILE * blocks];
                quantize_row(&x, &mut q);
                let rows: [&[BlockQ8K]; WIDE_ROW_TILE] =
                    std::array::from_fn(|r| &q[r * blocks..(r + 1) * blocks]);
                let mut pairs = Vec::new();
                pair_blocks(rows, &mut pairs);
                // SAFETY: AVX2, FMA and F16C were detected; every row holds one block
                // per super-block of `w`.
                let single = rows.map(|x| unsafe { x86::dot_avx2(format, &w, x) });
                let tile = dot_rows_wide(format, &w, rows, &pairs, true);
                assert_eq!(
                    single.map(f32::to_bits),
                    tile.map(f32::to_bits),
                    "{format:?}: {single:?} vs {tile:?}"
                );
            }
        }
    }
}
