// ---- Steps of a few tokens (a batched decode step, one token per sequence) ----
// `matvec_multi`: one workgroup computes MV_ROWS rows (4 or 8: ROW_GROUPS 1 or 2) for up to
// MV_COLS tokens (at most 8). Each thread loads and decodes its unit of every row once
// (`w_unit`, the quants in registers) and then multiplies them with every token's x of that
// unit (`w_dot`), as llama.cpp's mul_mat_vec shaders do with NUM_COLS: the weights are read
// and decoded once per workgroup, not once per token. Where the products take int8 x
// (MV_DP4A), the step's x is quantized once by `quantize_x` before the product (MV_XQ), as
// llama.cpp quantizes its activations to Q8_1 once per product, not in every workgroup; the
// values are those of `x_unit`, so a token's products are the arithmetic of its one-token
// `matvec` step (`unit_dot` is `w_dot(w_unit(..))`, summed in the same order): results do
// not depend on the batch.
// Why at most 8 tokens: the accumulators are 4 floats per token and group of four rows (64
// registers at 8 rows x 8 tokens) on top of the loaded weights (about 10 registers per row
// for the int8 types) and one token's x; more would lower the number of workgroups a core
// holds, which hides the memory latency. llama.cpp's mul_mat_vec shaders stop at the same
// NUM_COLS (mul_mat_vec_max_cols = 8). More tokens run as z slices of MV_COLS tokens,
// numbered slice-fastest, so that the slices of one group of rows run at about the same time
// and all but the first read the rows from the L2 cache.

override MV_COLS: u32 = 8u;

// Unit u of four consecutive rows as `w_unit` loads it (rows past `last` read row `last`).
fn w_rows4(f: u32, last: u32, u: u32) -> array<WUnit, 4> {
    return array<WUnit, 4>(w_unit(min(f, last), u), w_unit(min(f + 1u, last), u),
                           w_unit(min(f + 2u, last), u), w_unit(min(f + 3u, last), u));
}

// The four rows' products with one token's unit of x.
fn dot_rows4(ws: array<WUnit, 4>, xu: XUnit) -> vec4<f32> {
    return vec4<f32>(w_dot(ws[0], xu), w_dot(ws[1], xu), w_dot(ws[2], xu), w_dot(ws[3], xu));
}

// Whether `matvec_multi` reads x quantized to int8 ahead by `quantize_x` (a pipeline
// constant: with MV_DP4A, where the host dispatches `quantize_x` before the product) instead
// of quantizing every token's unit in every workgroup.
override MV_XQ: bool = false;
// Per token and unit of the step's x, three vec4 words: the int8 values (four per word) and
// (qd, qsum, qsum_lo) as `x_finish` computes them.
@group(0) @binding(15) var<storage, read_write> xq: array<vec4<u32>>;

// Quantizes the step's x once (one thread per token and unit: y = token, x = units / WG),
// for every workgroup of the products that follow.
@compute @workgroup_size(64)
fn quantize_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let units = p.k / 32u;
    let u = wid.x * WG + li;
    let t = wid.y;
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    if (u >= units || t >= n) {
        return;
    }
    mv_token = t;
    store_xq(t, u, x_unit(0u, u));
}

// RMSNorm and `quantize_x` in one dispatch (the RMSNorm before the q|k|v and gate|up
// products of a multi-token step, when every product after it reads the int8 x): one
// workgroup per token (y = token) normalizes its row of x times norm_w and writes every unit
// of it quantized, as `quantize_x` writes it. No f32 row is written: the products read only
// xq. The norm repeats rmsnorm.wgsl's arithmetic (each thread sums the squares of elements
// li, li + WG, ..., the same halving reduction, the same scale, x * scale * w), so the
// quantized values are those of rmsnorm then quantize_x, bit for bit (tests/kernels.rs).
@compute @workgroup_size(64)
fn norm_quantize_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wid.y;
    if (t >= step.n_tokens) {
        return;
    }
    let row = t * p.k;
    var s = 0.0;
    for (var i = li; i < p.k; i += WG) {
        let v = x[(row + i) / 4u][(row + i) % 4u];
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
    let scale = 1.0 / sqrt(red[0] / f32(p.k) + p.eps);
    let units = p.k / 32u;
    for (var u = li; u < units; u += WG) {
        let b = u * 8u;
        let xb = row / 4u + b;
        let v = array<vec4<f32>, 8>(
            x[xb] * scale * norm_w[b], x[xb + 1u] * scale * norm_w[b + 1u],
            x[xb + 2u] * scale * norm_w[b + 2u], x[xb + 3u] * scale * norm_w[b + 3u],
            x[xb + 4u] * scale * norm_w[b + 4u], x[xb + 5u] * scale * norm_w[b + 5u],
            x[xb + 6u] * scale * norm_w[b + 6u], x[xb + 7u] * scale * norm_w[b + 7u]);
        store_xq(t, u, x_finish(v, 0.0));
    }
}

// Whether `glu_quantize_x` reads each token's gate|up row interleaved (gate j at 2j, up j at
// 2j + 1: the gate|up matrix uploaded with its rows interleaved) rather than as [gate | up].
override GLU_INTERLEAVED: bool = false;

// SiLU·mul and `quantize_x` in one dispatch (the down product's input in a multi-token step,
// where it reads int8 x): x holds each token's gate|up row (2 p.k values); one thread per
// token and unit (y = token, x = units / WG) computes silu(gate) * up as silu_mul.wgsl does
// (a / (1 + exp(-a)) * up, so the same values) and writes the unit quantized, as
// `quantize_x` writes it. No f32 activation is written: the product reads only xq.
@compute @workgroup_size(64)
fn glu_quantize_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let units = p.k / 32u;
    let u = wid.x * WG + li;
    let t = wid.y;
    if (u >= units || t >= step.n_tokens) {
        return;
    }
    let v = array<vec4<f32>, 8>(glu4(t, u, 0u), glu4(t, u, 1u), glu4(t, u, 2u), glu4(t, u, 3u),
                                glu4(t, u, 4u), glu4(t, u, 5u), glu4(t, u, 6u), glu4(t, u, 7u));
    store_xq(t, u, x_finish(v, 0.0));
}

// silu(gate) * up of values 4i..4i + 3 of token t's unit u (for `glu_quantize_x`).
fn glu4(t: u32, u: u32, i: u32) -> vec4<f32> {
    // The token's gate|up row starts at vec4 word t * 2 p.k / 4.
    let row = t * (p.k / 2u);
    var gate: vec4<f32>;
    var up: vec4<f32>;
    if (GLU_INTERLEAVED) {
        let a = x[row + u * 16u + 2u * i];
        let b = x[row + u * 16u + 2u * i + 1u];
        gate = vec4<f32>(a.x, a.z, b.x, b.z);
        up = vec4<f32>(a.y, a.w, b.y, b.w);
    } else {
        gate = x[row + u * 8u + i];
        up = x[row + p.k / 4u + u * 8u + i];
    }
    return gate / (1.0 + exp(-gate)) * up;
}

// Writes token t's unit u of the quantized x (three vec4 words, see `xq`).
fn store_xq(t: u32, u: u32, xu: XUnit) {
    let o = (t * (p.k / 32u) + u) * 3u;
    xq[o] = vec4<u32>(xu.q[0], xu.q[1], xu.q[2], xu.q[3]);
    xq[o + 1u] = vec4<u32>(xu.q[4], xu.q[5], xu.q[6], xu.q[7]);
    xq[o + 2u] = vec4<u32>(bitcast<u32>(xu.qd), bitcast<u32>(xu.qsum), bitcast<u32>(xu.qsum_lo), 0u);
}

// Token t's unit u of x, as the one-token kernel transforms it (mode 0: plain): from
// `quantize_x`'s buffer (MV_XQ: only the int8 fields, all that `w_dot` reads with MV_DP4A),
// else computed here.
fn multi_x(t: u32, u: u32) -> XUnit {
    if (MV_XQ) {
        let o = (t * (p.k / 32u) + u) * 3u;
        let a = xq[o];
        let b = xq[o + 1u];
        let m = xq[o + 2u];
        var xu: XUnit;
        xu.q = array<u32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
        xu.qd = bitcast<f32>(m.x);
        xu.qsum = bitcast<i32>(m.y);
        xu.qsum_lo = bitcast<i32>(m.z);
        return xu;
    }
    mv_token = t;
    return x_unit(0u, u);
}

// Sets mv_acc[4i..4i+3] (call with constant i).
fn put4(i: u32, v: vec4<f32>) {
    mv_acc[4u * i] = v.x; mv_acc[4u * i + 1u] = v.y; mv_acc[4u * i + 2u] = v.z; mv_acc[4u * i + 3u] = v.w;
}

// Reduces the sums in mv_acc over the workgroup, token t + i's row r at i * MV_ROWS + r
// (16 values: 4 tokens of 4 rows, or 2 of 8), and writes the rows of the tokens before
// `end`: one reduction for several tokens, each value summed as `reduce_rows` sums a row.
// Call from uniform control flow (barriers).
fn multi_store(t: u32, end: u32, first: u32, l: Lanes) {
    let total = reduce_values(l, 16u);
    let i = l.li / MV_ROWS;
    var lr = l;
    lr.li = l.li % MV_ROWS;
    if (l.li < 16u && t + i < end) {
        store_row(t + i, first, total, lr);
    }
    // The next reduction reuses the workgroup memory this one read.
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn matvec_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, l: Lanes) {
    let linear = wid.x + groups.x * (wid.y + groups.y * wid.z);
    let slice = linear % groups.z;
    let first = (linear / groups.z) * MV_ROWS;
    if (first >= p.rows) {
        return;
    }
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    let t0 = slice * MV_COLS;
    if (t0 >= n) {
        return;
    }
    let tn = min(MV_COLS, n - t0);
    let last = p.rows - 1u;
    let units = p.k / 32u;
    // One vec4 per token and group of four rows, indexed by constants only (registers).
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0); var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var a5 = vec4<f32>(0.0); var a6 = vec4<f32>(0.0); var a7 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
    var b4 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
    let two = ROW_GROUPS > 1u;
    for (var u = l.li; u < units; u += WG) {
        // The rows' weights, loaded once for all tokens (the second group only feeds the
        // products under `two`, so with one group of rows its loads are dead code).
        let wa = w_rows4(first, last, u);
        let wb = w_rows4(first + 4u, last, u);
        var xu = multi_x(t0, u);
        a0 += dot_rows4(wa, xu);
        if (two) { b0 += dot_rows4(wb, xu); }
        if (tn > 1u) {
            xu = multi_x(t0 + 1u, u);
            a1 += dot_rows4(wa, xu);
            if (two) { b1 += dot_rows4(wb, xu); }
        }
        if (tn > 2u) {
            xu = multi_x(t0 + 2u, u);
            a2 += dot_rows4(wa, xu);
            if (two) { b2 += dot_rows4(wb, xu); }
        }
        if (tn > 3u) {
            xu = multi_x(t0 + 3u, u);
            a3 += dot_rows4(wa, xu);
            if (two) { b3 += dot_rows4(wb, xu); }
        }
        if (tn > 4u) {
            xu = multi_x(t0 + 4u, u);
            a4 += dot_rows4(wa, xu);
            if (two) { b4 += dot_rows4(wb, xu); }
        }
        if (tn > 5u) {
            xu = multi_x(t0 + 5u, u);
            a5 += dot_rows4(wa, xu);
            if (two) { b5 += dot_rows4(wb, xu); }
        }
        if (tn > 6u) {
            xu = multi_x(t0 + 6u, u);
            a6 += dot_rows4(wa, xu);
            if (two) { b6 += dot_rows4(wb, xu); }
        }
        if (tn > 7u) {
            xu = multi_x(t0 + 7u, u);
            a7 += dot_rows4(wa, xu);
            if (two) { b7 += dot_rows4(wb, xu); }
        }
    }
    let end = t0 + tn;
    if (two) {
        put4(0u, a0); put4(1u, b0); put4(2u, a1); put4(3u, b1);
        multi_store(t0, end, first, l);
        if (tn > 2u) {
            put4(0u, a2); put4(1u, b2); put4(2u, a3); put4(3u, b3);
            multi_store(t0 + 2u, end, first, l);
        }
        if (tn > 4u) {
            put4(0u, a4); put4(1u, b4); put4(2u, a5); put4(3u, b5);
            multi_store(t0 + 4u, end, first, l);
        }
        if (tn > 6u) {
            put4(0u, a6); put4(1u, b6); put4(2u, a7); put4(3u, b7);
            multi_store(t0 + 6u, end, first, l);
        }
    } else {
        put4(0u, a0); put4(1u, a1); put4(2u, a2); put4(3u, a3);
        multi_store(t0, end, first, l);
        if (tn > 4u) {
            put4(0u, a4); put4(1u, a5); put4(2u, a6); put4(3u, a7);
            multi_store(t0 + 4u, end, first, l);
        }
    }
}
