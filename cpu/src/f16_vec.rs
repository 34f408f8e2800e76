//! f16 vector operations of the KV cache, in ggml's arithmetic.
//!
//! The KV cache holds f16 (as llama.cpp's does by default: half the memory and half
//! the bytes attention reads). Decode attention follows ggml's CPU flash attention
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`): the query is rounded to
//! f16, each score is ggml's `ggml_vec_dot_f16` (four 8-lane accumulators, the same
//! reduction tree) and the weighted sum of values is kept in f16 and rounded after
//! every position (`ggml_vec_mad_f16`, `ggml_vec_scale_f16`). Doing the same
//! arithmetic keeps greedy decoding on llama.cpp's tokens where two candidates are
//! nearly tied; the f16 rounding itself is small next to int8 activations.
//!
//! x86-64 CPUs with AVX2+FMA+F16C run SIMD code; others run scalar code with the
//! same operation order (and so the same results).

use half::f16;

/// Whether the SIMD versions can run (checked once per call site by the caller).
///
/// The `simd` argument of the functions below must come from this function: they
/// run AVX2 code when it is true.
pub(crate) use super::kernels::has_avx2 as simd;

/// Σ x[i]·y[i] in ggml's order: steps of 32 into four 8-lane FMA accumulators, the
/// accumulators added pairwise (0+2, 1+3, then 0+1), the 8 lanes folded
/// (low + high half, then two horizontal adds), leftovers added one by one.
pub fn dot(x: &[f16], y: &[f16], simd: bool) -> f32 {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when AVX2, FMA and F16C were detected, and the
        // lengths are equal (asserted above).
        return unsafe { x86::dot(x, y) };
    }
    let _ = simd;
    let n = x.len();
    let np = n & !31;
    let mut acc = [[0f32; 8]; 4];
    for step in (0..np).step_by(32) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                let i = step + 8 * j + l;
                *a = x[i].to_f32().mul_add(y[i].to_f32(), *a);
            }
        }
    }
    let mut v = [0f32; 8];
    for l in 0..8 {
        v[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let t0 = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let mut sum = ((t0[0] + t0[1]) + (t0[2] + t0[3])) as f64;
    for i in np..n {
        sum += (x[i].to_f32() * y[i].to_f32()) as f64;
    }
    sum as f32
}

/// y[i] = f16(y[i] + x[i]·v), one fused multiply-add per element.
pub fn mad(y: &mut [f16], x: &[f16], v: f32, simd: bool) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `dot`.
        return unsafe { x86::mad(y, x, v) };
    }
    let _ = simd;
    for (a, b) in y.iter_mut().zip(x) {
        *a = f16::from_f32(b.to_f32().mul_add(v, a.to_f32()));
    }
}

/// y[i] = f16(y[i]·v).
pub fn scale(y: &mut [f16], v: f32, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `dot`.
        return unsafe { x86::scale(y, v) };
    }
    let _ = simd;
    for a in y.iter_mut() {
        *a = f16::from_f32(a.to_f32() * v);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 versions. Every function may only run on a CPU with AVX2, FMA and
    //! F16C, and those of two slices need them of equal length: the loads go through
    //! raw pointers up to the first slice's length.
    use half::f16;
    use std::arch::x86_64::*;

    /// Eight f16 at `p` as f32.
    ///
    /// # Safety
    /// The CPU has F16C and AVX, and `p` is valid for reading 8 values (any alignment).
    #[inline(always)]
    unsafe fn load(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// `v` rounded to eight f16 at `p`.
    ///
    /// # Safety
    /// The CPU has F16C and AVX, and `p` is valid for writing 8 values (any alignment).
    #[inline(always)]
    unsafe fn store(p: *mut f16, v: __m256) {
        _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        );
    }

    /// [`super::dot`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `x.len() == y.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(x: &[f16], y: &[f16]) -> f32 {
        let n = x.len();
        let np = n & !31;
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for step in (0..np).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                let i = step + 8 * j;
                *a = _mm256_fmadd_ps(load(xp.add(i)), load(yp.add(i)), *a);
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
        for i in np..n {
            sum += (x[i].to_f32() * y[i].to_f32()) as f64;
        }
        sum as f32
    }

    /// [`super::mad`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `x.len() == y.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad(y: &mut [f16], x: &[f16], v: f32) {
        let n = y.len();
        let np = n & !7;
        let vv = _mm256_set1_ps(v);
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        for i in (0..np).step_by(8) {
            store(
                yp.add(i),
                _mm256_fmadd_ps(load(xp.add(i)), vv, load(yp.add(i))),
            );
        }
        for i in np..n {
            y[i] = f16::from_f32(x[i].to_f32().mul_add(v, y[i].to_f32()));
        }
    }

    /// [`super::scale`].
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale(y: &mut [f16], v: f32) {
        let n = y.len();
        let np = n & !7;
        let vv = _mm256_set1_ps(v);
        let yp = y.as_mut_ptr();
        for i in (0..np).step_by(8) {
            store(yp.add(i), _mm256_mul_ps(load(yp.add(i)), vv));
        }
        for a in &mut y[np..] {
            *a = f16::from_f32(a.to_f32() * v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f16> {
        (0..n)
            .map(|i| f16::from_f32((((i as u32 * 2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0))
            .collect()
    }

    #[test]
    fn simd_and_scalar_give_identical_results() {
        if !simd() {
            return; // nothing to compare on this CPU
        }
        for n in [64, 80, 128, 7] {
            let (x, y) = (data(n, 1), data(n, 2));
            assert_eq!(
                dot(&x, &y, true).to_bits(),
                dot(&x, &y, false).to_bits(),
                "dot, n = {n}"
            );
            let exact: f64 = x.iter().zip(&y).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            assert!(
                (dot(&x, &y, false) as f64 - exact).abs() < 1e-4,
                "dot is not a dot product"
            );
            let (mut a, mut b) = (y.clone(), y.clone());
            mad(&mut a, &x, 0.37, true);
            mad(&mut b, &x, 0.37, false);
            assert_eq!(a, b, "mad, n = {n}");
            assert!((a[3].to_f32() - (y[3].to_f32() + x[3].to_f32() * 0.37)).abs() < 2e-3);
            scale(&mut a, 0.5, true);
            scale(&mut b, 0.5, false);
            assert_eq!(a, b, "scale, n = {n}");
        }
    }
}
