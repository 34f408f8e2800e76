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

// 1 / sqrt(mean(x[t]^2) + eps) of x row t; li: the thread within the workgroup. Call from
// uniform control flow (workgroup barriers).
// The loop takes eight of a thread's elements per iteration, loaded before any is used, so
// that eight loads are in flight at a time: a loop of one element waited for every load in
// turn (the driver compilers seen do not unroll WGSL loops), 35 us per 4096-wide token row
// on an H100. The squares are still added one at a time in element order, so the sum is
// the one-element loop's bit for bit (norm_quantize_x in matvec_multi.wgsl repeats it).
fn row_scale(t: u32, li: u32) -> f32 {
    let xb = t * p.n;
    var s = 0.0;
    var i = li;
    for (; i + 7u * WG < p.n; i += 8u * WG) {
        let v = array<f32, 8>(x[xb + i], x[xb + i + WG], x[xb + i + 2u * WG], x[xb + i + 3u * WG],
                              x[xb + i + 4u * WG], x[xb + i + 5u * WG], x[xb + i + 6u * WG],
                              x[xb + i + 7u * WG]);
        s += v[0] * v[0];
        s += v[1] * v[1];
        s += v[2] * v[2];
        s += v[3] * v[3];
        s += v[4] * v[4];
        s += v[5] * v[5];
        s += v[6] * v[6];
        s += v[7] * v[7];
    }
    for (; i < p.n; i += WG) {
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
    return 1.0 / sqrt(red[0] / f32(p.n) + p.eps);
}

// Normalises x row t into y row out_t; li: the thread within the workgroup. The write loop
// loads eight elements per iteration as `row_scale` does.
fn norm_row(t: u32, out_t: u32, li: u32) {
    let scale = row_scale(t, li);
    let xb = t * p.n;
    let yb = out_t * p.n;
    var j = li;
    if (p.accumulate == 0u) {
        for (; j + 7u * WG < p.n; j += 8u * WG) {
            let v = array<f32, 8>(x[xb + j], x[xb + j + WG], x[xb + j + 2u * WG], x[xb + j + 3u * WG],
                                  x[xb + j + 4u * WG], x[xb + j + 5u * WG], x[xb + j + 6u * WG],
                                  x[xb + j + 7u * WG]);
            let w = array<f32, 8>(weight[j], weight[j + WG], weight[j + 2u * WG], weight[j + 3u * WG],
                                  weight[j + 4u * WG], weight[j + 5u * WG], weight[j + 6u * WG],
                                  weight[j + 7u * WG]);
            y[yb + j] = v[0] * scale * w[0];
            y[yb + j + WG] = v[1] * scale * w[1];
            y[yb + j + 2u * WG] = v[2] * scale * w[2];
            y[yb + j + 3u * WG] = v[3] * scale * w[3];
            y[yb + j + 4u * WG] = v[4] * scale * w[4];
            y[yb + j + 5u * WG] = v[5] * scale * w[5];
            y[yb + j + 6u * WG] = v[6] * scale * w[6];
            y[yb + j + 7u * WG] = v[7] * scale * w[7];
        }
    }
    for (; j < p.n; j += WG) {
        let v = x[xb + j] * scale * weight[j];
        if (p.accumulate != 0u) {
            y[yb + j] += v;
        } else {
            y[yb + j] = v;
        }
    }
}

// For x16_out.wgsl (a prompt product's f16 x written by the norm): the row's scale, and
// element i of the normalised row t, computed as `norm_row` computes it.
fn x16_row(t: u32, li: u32) -> f32 {
    return row_scale(t, li);
}

fn x16_value(t: u32, i: u32, scale: f32) -> f32 {
    return x[t * p.n + i] * scale * weight[i];
}
