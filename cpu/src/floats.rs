//! Weight rows stored as plain floats (GGUF F16, BF16, F32) against f32 activations.
//!
//! ggml multiplies an F16 matrix by activations converted to f16 and a BF16 matrix by
//! activations converted to bf16; [`round_activations`] does the same rounding (and
//! keeps the rounded values as f32, which holds them exactly), so the products see the
//! same inputs. Accumulation is in f32, in four vectors of eight lanes as ggml's AVX2
//! `ggml_vec_dot_f16`.

/// The float formats of weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatFormat {
    F16,
    BF16,
    F32,
}

impl FloatFormat {
    /// Bytes of one weight.
    pub const fn bytes(self) -> usize {
        match self {
            FloatFormat::F16 | FloatFormat::BF16 => 2,
            FloatFormat::F32 => 4,
        }
    }

    /// Weight `i` of `row`.
    #[inline(always)]
    fn at(self, row: &[u8], i: usize) -> f32 {
        match self {
            FloatFormat::F16 => half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
            FloatFormat::BF16 => half::bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
            FloatFormat::F32 => {
                f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
            }
        }
    }
}

/// `x` rounded to the precision that ggml gives the activations of a `format` matrix
/// (nearest, ties to even), into `out`.
pub fn round_activations(format: FloatFormat, x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    match format {
        FloatFormat::F16 => out.extend(x.iter().map(|&v| half::f16::from_f32(v).to_f32())),
        FloatFormat::BF16 => out.extend(x.iter().map(|&v| half::bf16::from_f32(v).to_f32())),
        FloatFormat::F32 => out.extend_from_slice(x),
    }
}

/// Dequantizes (converts) one row into `out`.
pub fn dequantize_row(format: FloatFormat, row: &[u8], out: &mut [f32]) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = format.at(row, i);
    }
}

/// One weight row · one activation row (rounded by [`round_activations`]), on AVX2
/// when `avx2` (which must come from [`super::kernels::has_avx2`]), else portable.
#[inline]
pub fn dot(format: FloatFormat, w: &[u8], x: &[f32], avx2: bool) -> f32 {
    debug_assert_eq!(w.len(), x.len() * format.bytes());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when AVX2, FMA and F16C were detected; the row
        // holds `x.len()` weights (asserted by the callers).
        return unsafe { x86::dot(format, w, x) };
    }
    let _ = avx2;
    dot_scalar(format, w, x)
}

/// The portable dot product: 32 f32 lanes (element index mod 32), then their sum.
pub fn dot_scalar(format: FloatFormat, w: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 32];
    for (i, &v) in x.iter().enumerate() {
        lanes[i % 32] = format.at(w, i).mul_add(v, lanes[i % 32]);
    }
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::FloatFormat;
    use std::arch::x86_64::*;

    /// Eight weights from `p` as f32.
    #[inline(always)]
    unsafe fn load(format: FloatFormat, p: *const u8) -> __m256 {
        match format {
            FloatFormat::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            FloatFormat::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            )),
            FloatFormat::F32 => _mm256_loadu_ps(p as *const f32),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(format: FloatFormat, w: &[u8], x: &[f32]) -> f32 {
        match format {
            FloatFormat::F16 => dot_for::<0>(w, x),
            FloatFormat::BF16 => dot_for::<1>(w, x),
            FloatFormat::F32 => dot_for::<2>(w, x),
        }
    }

    /// [`dot`] for one format (`F`: 0 = F16, 1 = BF16, 2 = F32), so that the format
    /// checks fold away.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_for<const F: u8>(w: &[u8], x: &[f32]) -> f32 {
        let format = match F {
            0 => FloatFormat::F16,
            1 => FloatFormat::BF16,
            _ => FloatFormat::F32,
        };
        let size = format.bytes();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let whole = x.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(i * size + 2048) as *const i8);
            for (k, acc) in acc.iter_mut().enumerate() {
                let at = i + 8 * k;
                *acc = _mm256_fmadd_ps(
                    load(format, wp.add(at * size)),
                    _mm256_loadu_ps(xp.add(at)),
                    *acc,
                );
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut total = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        for (i, &v) in x.iter().enumerate().skip(whole) {
            total = format.at(w, i).mul_add(v, total);
        }
        total
    }
}
