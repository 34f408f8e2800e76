// ---- Steps of a few tokens (a batched decode step, one token per sequence) ----
// `matvec_multi`: one workgroup computes MV_ROWS rows (4 or 8: ROW_GROUPS 1 or 2) for up to
// MV_COLS tokens (at most 8), so that each weight unit is read once per workgroup and
// multiplied with every token's x: per unit, token after token, `x_unit` brings that
// token's 32 values (int8-quantized where MV_DP4A, as the one-token kernel does) and
// `group4` multiplies them with the rows. The weight loads of one unit are the same for
// every token (same address, no store in between): the first token's loads dominate the
// others, so the compiler keeps the loaded words instead of loading them again (and a
// repeated load would be a hit in the L1 cache, not a read from memory). A token's products
// are the arithmetic of its one-token `matvec` step, so results do not depend on the batch.
// Why at most 8 tokens: the accumulators are 4 floats per token and group of four rows (64
// registers at 8 rows x 8 tokens) on top of the loaded weights and one token's x; more would
// lower the number of workgroups a core holds, which hides the memory latency. llama.cpp's
// mul_mat_vec shaders stop at the same NUM_COLS (mul_mat_vec_max_cols = 8). More tokens run
// as z slices of MV_COLS tokens, numbered slice-fastest, so that the slices of one group of
// rows run at about the same time and all but the first read the rows from the L2 cache.

override MV_COLS: u32 = 8u;

// Token t's products with one unit: rows first..first+3 and (ROW_GROUPS 2) first+4..first+7.
fn multi_token_unit(t: u32, first: u32, last: u32, u: u32) -> array<vec4<f32>, 2> {
    mv_token = t;
    let xu = x_unit(0u, u);
    var r = array<vec4<f32>, 2>(group4(first, last, u, xu), vec4<f32>(0.0));
    if (ROW_GROUPS > 1u) {
        r[1] = group4(first + 4u, last, u, xu);
    }
    return r;
}

// Reduces token t's sums over the workgroup and writes its rows. Call from uniform control
// flow (barriers), once per token in use.
fn multi_token_store(t: u32, first: u32, lo: vec4<f32>, hi: vec4<f32>, l: Lanes) {
    mv_acc[0] = lo.x; mv_acc[1] = lo.y; mv_acc[2] = lo.z; mv_acc[3] = lo.w;
    mv_acc[4] = hi.x; mv_acc[5] = hi.y; mv_acc[6] = hi.z; mv_acc[7] = hi.w;
    store_row(t, first, reduce_rows(l), l);
    // The next token's reduction reuses the workgroup memory this one read.
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
    for (var u = l.li; u < units; u += WG) {
        let r0 = multi_token_unit(t0, first, last, u);
        a0 += r0[0]; b0 += r0[1];
        if (tn > 1u) {
            let r = multi_token_unit(t0 + 1u, first, last, u);
            a1 += r[0]; b1 += r[1];
        }
        if (tn > 2u) {
            let r = multi_token_unit(t0 + 2u, first, last, u);
            a2 += r[0]; b2 += r[1];
        }
        if (tn > 3u) {
            let r = multi_token_unit(t0 + 3u, first, last, u);
            a3 += r[0]; b3 += r[1];
        }
        if (tn > 4u) {
            let r = multi_token_unit(t0 + 4u, first, last, u);
            a4 += r[0]; b4 += r[1];
        }
        if (tn > 5u) {
            let r = multi_token_unit(t0 + 5u, first, last, u);
            a5 += r[0]; b5 += r[1];
        }
        if (tn > 6u) {
            let r = multi_token_unit(t0 + 6u, first, last, u);
            a6 += r[0]; b6 += r[1];
        }
        if (tn > 7u) {
            let r = multi_token_unit(t0 + 7u, first, last, u);
            a7 += r[0]; b7 += r[1];
        }
    }
    multi_token_store(t0, first, a0, b0, l);
    if (tn > 1u) { multi_token_store(t0 + 1u, first, a1, b1, l); }
    if (tn > 2u) { multi_token_store(t0 + 2u, first, a2, b2, l); }
    if (tn > 3u) { multi_token_store(t0 + 3u, first, a3, b3, l); }
    if (tn > 4u) { multi_token_store(t0 + 4u, first, a4, b4, l); }
    if (tn > 5u) { multi_token_store(t0 + 5u, first, a5, b5, l); }
    if (tn > 6u) { multi_token_store(t0 + 6u, first, a6, b6, l); }
    if (tn > 7u) { multi_token_store(t0 + 7u, first, a7, b7, l); }
}
