// SwiGLU: act[t, i] = silu(gate[t, i]) * up[t, i], where token t's row of `gu` is
// [gate | up], or with p.interleaved [gate 0, up 0, gate 1, up 1, ...] (the gate|up matrix
// uploaded with its rows interleaved, see `matvec_norm_glu` in matmul.wgsl). With p.gelu,
// GeGLU (Gemma): gelu(gate) * up, GELU with ggml's tanh approximation.
struct Params {
    n: u32,   // elements per token
    interleaved: u32,
    gelu: u32,
    _pad2: u32,
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read> gu: array<f32>;
@group(0) @binding(1) var<storage, read_write> act: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = step.n_tokens * p.n;
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < total; i += stride) {
        act[i] = glu(i / p.n, i % p.n);
    }
}

// Element j of token t's activation.
fn glu(t: u32, j: u32) -> f32 {
    var gi = t * 2u * p.n + j;
    var ui = gi + p.n;
    if (p.interleaved != 0u) {
        gi = t * 2u * p.n + 2u * j;
        ui = gi + 1u;
    }
    let a = gu[gi];
    if (p.gelu != 0u) {
        // 0.5 a (1 + tanh(sqrt(2/pi) a (1 + 0.044715 a^2))); the argument is clamped where
        // tanh is already +-1 in f32, so that no driver's tanh overflows.
        let z = clamp(0.7978845608 * a * (1.0 + 0.044715 * a * a), -10.0, 10.0);
        return 0.5 * a * (1.0 + tanh(z)) * gu[ui];
    }
    return a / (1.0 + exp(-a)) * gu[ui];
}

// For x16_out.wgsl (a prompt product's f16 x written by SiLU·mul): no per-row value, and
// element i of token t's activation as `silu_mul` computes it.
fn x16_row(t: u32, li: u32) -> f32 {
    return 0.0;
}

fn x16_value(t: u32, i: u32, row: f32) -> f32 {
    return glu(t, i);
}
