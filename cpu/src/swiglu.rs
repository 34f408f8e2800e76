//! SwiGLU, `silu(gate) * up`, in ggml's arithmetic: on AVX2+FMA CPUs ggml computes
//! `exp` with its own polynomial (`ggml_v_expf`), which differs from libm's `expf` in
//! the last bits. Using the same polynomial keeps int8-quantized activations (and so
//! greedy tokens) on llama.cpp's values; other CPUs use `x / (1 + exp(-x))` as
//! ggml's scalar code does.

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::kernels::has_avx2() {
        // SAFETY: has_avx2 found AVX2 and FMA, and the lengths are equal (asserted above).
        done = unsafe { x86::swiglu(gate, up) };
    }
    for (g, u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// ggml's `ggml_v_expf` (AVX2 + FMA), term for term.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn expf(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000)); // 0x1.8p23
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r); // 0x1.715476p+0
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(f32::from_bits(0x35bf_be8e)), // 0x1.7f7d1cp-20
            _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x), // 0x1.62e4p-1
        );
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0)));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(
                    _mm256_set1_ps(f32::from_bits(0x3c07_2010)),
                    b,
                    _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)),
                ),
                u,
                _mm256_fmadd_ps(
                    _mm256_set1_ps(f32::from_bits(0x3e2a_af33)),
                    b,
                    _mm256_set1_ps(f32::from_bits(0x3eff_fedb)),
                ),
            ),
            u,
            _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
        );
        if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0)));
        _mm256_or_ps(
            _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                _mm256_castsi256_ps(d),
                _mm256_or_ps(
                    _mm256_and_ps(
                        _mm256_castsi256_ps(c),
                        _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1),
                    ),
                    _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// SwiGLU on whole groups of 8; returns how many elements it did.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and `up` is at least as long as `gate`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len() & !7;
        let (gp, up) = (gate.as_mut_ptr(), up.as_ptr());
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(gp.add(i));
            let silu = _mm256_div_ps(
                x,
                _mm256_add_ps(
                    _mm256_set1_ps(1.0),
                    expf(_mm256_sub_ps(_mm256_setzero_ps(), x)),
                ),
            );
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.add(i))));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_exact_function_closely_over_the_whole_range() {
        let x: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.05)
            .chain([-150.0, -100.0, 90.0, 200.0])
            .collect();
        let up: Vec<f32> = x.iter().map(|v| 0.5 + v.abs().sin()).collect();
        let mut got = x.clone();
        swiglu_in_place(&mut got, &up);
        for ((g, x), u) in got.iter().zip(&x).zip(&up) {
            let exact = (*x as f64 / (1.0 + (-*x as f64).exp()) * *u as f64) as f32;
            assert!(
                (g - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                "x = {x}: {g} vs {exact}"
            );
        }
    }
}
