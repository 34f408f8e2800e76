// ---- Prompt batches of many tokens on cooperative matrices (matrix cores) ----
// The same product and outputs as `matmul_tiled` (matmul.wgsl), with the multiply-adds done
// by 16x16x16 cooperative matrices: f16 operands, f32 sums. Appended to a type's matmul
// module (it uses that module's bindings, Params, `load_unit` and ROWS_PER_Y) behind
// `enable f16; enable wgpu_cooperative_matrix;`; kernels.rs builds it only where the device
// lists that configuration (see `cooperative_prefill` in device.rs).
//
// A workgroup computes a tile of COOP_ROWS = 64 rows by COOP_TOKENS = 64 tokens with four
// subgroups of COOP_SG threads; subgroup s owns the quarter of 32 rows (s % 2) by 32 tokens
// (s / 2), that is 2 x 2 accumulator matrices. k is walked one 32-weight unit at a time: the
// workgroup dequantizes the tile's 64 rows of the unit (`load_unit`, once per tile as in
// `matmul_tiled`) and the 64 tokens' 32 x values into workgroup memory as f16, then each
// subgroup multiplies two 16-deep slices of them into its four accumulators. At the end each
// accumulator goes through workgroup memory to the threads, which write the rows and tokens
// inside the chunk and the batch as `tiled_store` does (plain or added, at out_offset).
//
// Workgroup memory is 14 KiB (within WebGPU's default 16 KiB): the f16 tiles and one f32
// 16x16 matrix per subgroup. Cooperative loads need their pointer and stride aligned to 16
// bytes, so a staged row is COOP_STRIDE = 40 halves (the unit's 32 and 8 of padding, which
// also moves consecutive rows to different banks).

// The subgroup size the pipeline is built for (8, 16 or 32; fixed on the adapter, checked by
// the host): the workgroup is exactly four subgroups.
override COOP_SG: u32 = 32u;
const COOP_ROWS: u32 = 64u;
const COOP_TOKENS: u32 = 64u;
const COOP_STRIDE: u32 = 40u;
var<workgroup> coop_w: array<f16, 2560>;   // COOP_ROWS * COOP_STRIDE: row r's unit at r * COOP_STRIDE
var<workgroup> coop_x: array<f16, 2560>;   // COOP_TOKENS * COOP_STRIDE: token t's unit at t * COOP_STRIDE
var<workgroup> coop_out: array<f32, 1024>; // one 16x16 matrix per subgroup, column-major

// Writes the accumulator of rows `row0..row0 + 16` and tokens `tok0..tok0 + 16` (global row
// and token indices of this chunk and batch) to y. Call from uniform control flow: every
// subgroup stores one of its accumulators, then its threads copy it out.
fn coop_write(c: coop_mat16x16<f32, C>, sg: u32, lane: u32, row0: u32, tok0: u32, n: u32) {
    let base = sg * 256u;
    // Column-major: element (row i, token j) at base + 16 j + i, so 16 consecutive threads
    // write 16 consecutive rows of one token.
    coopStore(c, &coop_out[base], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += COOP_SG) {
        let row = row0 + e % 16u;
        let t = tok0 + e / 16u;
        if (row < p.rows && t < n) {
            let o = t * p.out_stride + p.out_offset + p.row_offset + row;
            if (p.accumulate != 0u) {
                y[o] += coop_out[base + e];
            } else {
                y[o] = coop_out[base + e];
            }
        }
    }
    // Every thread has read the matrix before the next store overwrites it.
    workgroupBarrier();
}

@compute @workgroup_size(4u * COOP_SG)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let first_row = (wid.x + wid.y * ROWS_PER_Y) * COOP_ROWS;
    if (first_row >= p.rows) {
        return;
    }
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    let t0 = wid.z * COOP_TOKENS;
    let kv = p.k / 4u;
    let units = p.k / 32u;
    let threads = 4u * COOP_SG;
    // This subgroup's quarter of the tile: its two 16-row blocks of coop_w, two 16-token
    // blocks of coop_x.
    let a_base = (sg % 2u) * 32u * COOP_STRIDE;
    let b_base = (sg / 2u) * 32u * COOP_STRIDE;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var u = 0u; u < units; u++) {
        // Every subgroup is done with the previous unit's tiles before they are overwritten.
        workgroupBarrier();
        // Rows past the chunk recompute the last one, tokens past the batch reread the last
        // one (x holds only n tokens); neither is written out.
        for (var r = li; r < COOP_ROWS; r += threads) {
            let wv = load_unit(min(first_row + r, p.rows - 1u), u);
            let o = r * COOP_STRIDE;
            for (var j = 0u; j < 8u; j++) {
                let h = vec4<f16>(wv[j]);
                coop_w[o + 4u * j] = h.x;
                coop_w[o + 4u * j + 1u] = h.y;
                coop_w[o + 4u * j + 2u] = h.z;
                coop_w[o + 4u * j + 3u] = h.w;
            }
        }
        // Eight threads read one token's 128 bytes of the unit.
        for (var i = li; i < COOP_TOKENS * 8u; i += threads) {
            let t = i / 8u;
            let j = i % 8u;
            let h = vec4<f16>(x[min(t0 + t, n - 1u) * kv + u * 8u + j]);
            let o = t * COOP_STRIDE + 4u * j;
            coop_x[o] = h.x;
            coop_x[o + 1u] = h.y;
            coop_x[o + 2u] = h.z;
            coop_x[o + 3u] = h.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk += 16u) {
            // A (16 rows x 16 k): row-major in coop_w. B (16 k x 16 tokens): token t's k
            // values are consecutive, so column-major in coop_x.
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&coop_w[a_base + kk], COOP_STRIDE);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&coop_w[a_base + 16u * COOP_STRIDE + kk], COOP_STRIDE);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&coop_x[b_base + kk], COOP_STRIDE);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&coop_x[b_base + 16u * COOP_STRIDE + kk], COOP_STRIDE);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
    }
    let row0 = first_row + (sg % 2u) * 32u;
    let tok0 = t0 + (sg / 2u) * 32u;
    coop_write(c00, sg, lane, row0, tok0, n);
    coop_write(c01, sg, lane, row0, tok0 + 16u, n);
    coop_write(c10, sg, lane, row0 + 16u, tok0, n);
    coop_write(c11, sg, lane, row0 + 16u, tok0 + 16u, n);
}
