// Per-head RMSNorm in place (Qwen3 and Gemma 3 normalise every q and k head before RoPE):
// x[t, offset + h * hd + i] = x * weight[i] / sqrt(mean_i(x^2) + eps) for heads h < heads
// of each token t (rows of `stride` floats). One workgroup per (head, token).
struct Params {
    hd: u32,
    heads: u32,
    offset: u32,  // float offset of the first head within a token's row
    stride: u32,  // floats per token
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn head_rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.y * p.stride + p.offset + wid.x * p.hd;
    var s = 0.0;
    for (var i = lid.x; i < p.hd; i += WG) {
        let v = x[b + i];
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
    let scale = 1.0 / sqrt(red[0] / f32(p.hd) + p.eps);
    // Each thread rewrites only the values it read.
    for (var i = lid.x; i < p.hd; i += WG) {
        x[b + i] = x[b + i] * scale * weight[i];
    }
}
