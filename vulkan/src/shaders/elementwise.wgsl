// Element-wise steps of some architectures, over the step's tokens:
//   add_bias: x[t * stride + offset + j] += bias[j] for j < width (Qwen2's q|k|v biases);
//   scale:    x[t * width + j] *= factor (Gemma's embedding scale, sqrt(n_embd)).
struct Params {
    width: u32,
    offset: u32,
    stride: u32,
    factor: f32,
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = step.n_tokens * p.width;
    for (var i = gid.x; i < total; i += nwg.x * 64u) {
        let t = i / p.width;
        let j = i % p.width;
        x[t * p.stride + p.offset + j] += bias[j];
    }
}

@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = step.n_tokens * p.width;
    for (var i = gid.x; i < total; i += nwg.x * 64u) {
        x[i] *= p.factor;
    }
}
