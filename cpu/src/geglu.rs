//! GeGLU, `gelu(gate) * up` with the tanh approximation of GELU, in ggml's arithmetic:
//! ggml's CPU backend (built with `GGML_GELU_FP16`) rounds the gate to f16, looks its
//! GELU up in a table of f16 values, and passes gates beyond ±10 through (0 below, the
//! gate itself above). The same table here keeps activations on llama.cpp's values.

use std::sync::OnceLock;

use half::f16;

/// ggml's `ggml_gelu_f32`. llama.cpp's compiler contracts `1 + a*x*x` into one FMA.
fn gelu(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// GELU of every f16 value, rounded to f16 (ggml's `ggml_table_gelu_f16`).
fn table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// `gate[i] = gelu(gate[i]) * up[i]`.
pub fn geglu_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    let table = table();
    for (g, u) in gate.iter_mut().zip(up) {
        *g = if *g <= -10.0 {
            0.0
        } else if *g >= 10.0 {
            *g * u
        } else {
            table[f16::from_f32(*g).to_bits() as usize].to_f32() * u
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_tanh_approximation_through_f16() {
        let mut gate = vec![-20.0, -1.0, 0.0, 0.5, 1.0, 3.0, 12.0];
        let up = vec![2.0; gate.len()];
        geglu_in_place(&mut gate, &up);
        // gelu_tanh(1) = 0.841192, gelu_tanh(-1) = -0.158808, gelu_tanh(3) = 2.996363.
        let expected = [
            0.0,
            -0.158808 * 2.0,
            0.0,
            0.345714 * 2.0,
            0.841192 * 2.0,
            2.996363 * 2.0,
            24.0,
        ];
        for (g, e) in gate.iter().zip(expected) {
            // f16 rounding: a relative error of at most 2^-11.
            assert!((g - e).abs() <= e.abs() / 1024.0 + 1e-6, "{gate:?}");
        }
    }
}
