// RMSNorm: y[t, i] = x[t, i] * weight[i] / sqrt(mean_i(x[t, i]^2) + eps), one workgroup per token
// (with p.accumulate, y += that: Gemma's norms after attention and FFN, before the residual add).
struct Params {
    n: u32,          // elements per token
    eps: f32,
    last_only: u32,  // 1: normalise only the last token, written to row 0 of y
    accumulate: u32, // 1: add into y
}
struct Step {
    n_tokens: u32,
    start: u32,
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    var t = wid.x;
    var out_t = wid.x;
    if (p.last_only != 0u) {
        t = step.n_tokens - 1u;
        out_t = 0u;
    }
    let xb = t * p.n;
    var s = 0.0;
    for (var i = lid.x; i < p.n; i += WG) {
        let v = x[xb + i];
        s += v * v;
    }
    red[lid.x] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid.x < k) {
            red[lid.x] += red[lid.x + k];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.n) + p.eps);
    let yb = out_t * p.n;
    for (var i = lid.x; i < p.n; i += WG) {
        let v = x[xb + i] * scale * weight[i];
        if (p.accumulate != 0u) {
            y[yb + i] += v;
        } else {
            y[yb + i] = v;
        }
    }
}
