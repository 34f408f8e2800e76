// SwiGLU: act[t, i] = silu(gate[t, i]) * up[t, i], where token t's row of `gu` is
// [gate | up], or with p.interleaved [gate 0, up 0, gate 1, up 1, ...] (the gate|up matrix
// uploaded with its rows interleaved, see `matvec_norm_glu` in matmul.wgsl).
struct Params {
    n: u32,   // elements per token
    interleaved: u32,
    _pad1: u32,
    _pad2: u32,
}
struct Step {
    n_tokens: u32,
    start: u32,
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
        let t = i / p.n;
        let j = i % p.n;
        var gi = t * 2u * p.n + j;
        var ui = gi + p.n;
        if (p.interleaved != 0u) {
            gi = t * 2u * p.n + 2u * j;
            ui = gi + 1u;
        }
        let a = gu[gi];
        act[i] = a / (1.0 + exp(-a)) * gu[ui];
    }
}
