// RMSNorm: y[t, i] = x[t, i] * weight[i] / sqrt(mean_i(x[t, i]^2) + eps), one workgroup per token
// (with p.accumulate, y += that: Gemma's norms after attention and FFN, before the residual add).
// `rmsnorm_rows`: the final norm before the output head, for the rows the logits are wanted
// of (each sequence's last token): output row j normalises x row sel[j].
struct Params {
    n: u32,          // elements per token
    eps: f32,
    _pad: u32,
    accumulate: u32, // 1: add into y
}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> sel: array<u32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    norm_row(wid.x, wid.x, lid.x);
}

@compute @workgroup_size(64)
fn rmsnorm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    norm_row(sel[wid.x], wid.x, lid.x);
}

// Normalises x row t into y row out_t; li: the thread within the workgroup.
fn norm_row(t: u32, out_t: u32, li: u32) {
    let xb = t * p.n;
    var s = 0.0;
    for (var i = li; i < p.n; i += WG) {
        let v = x[xb + i];
        s += v * v;
    }
    red[li] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (li < k) {
            red[li] += red[li + k];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.n) + p.eps);
    let yb = out_t * p.n;
    for (var i = li; i < p.n; i += WG) {
        let v = x[xb + i] * scale * weight[i];
        if (p.accumulate != 0u) {
            y[yb + i] += v;
        } else {
            y[yb + i] = v;
        }
    }
}
