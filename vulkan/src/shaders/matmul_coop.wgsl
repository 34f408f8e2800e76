// ---- Prompt batches of many tokens on cooperative matrices (matrix cores) ----
// The same product and outputs as `matmul_tiled` (matmul.wgsl), with the multiply-adds done
// by 16x16x16 cooperative matrices: f16 operands, f32 sums. Appended to a type's matmul
// module (it uses that module's bindings, Params, `load_unit` and ROWS_PER_Y) behind
// `enable f16; enable wgpu_cooperative_matrix;`; kernels.rs builds it only where the device
// lists that configuration (see `cooperative_prefill` in device.rs).
//
// The tile's shape comes from the host (kernels.rs `CoopShape`, tuning keys `cooptile` and
// `coopk`), which puts these constants in front of this file:
//   COOP_ROWS (64 or 128) rows by COOP_TOKENS (32, 64 or 128) tokens per workgroup;
//   COOP_UNITS (1, 2 or 4) 32-weight units of k staged per pair of barriers.
// The host also writes the three lines marked with a dollar sign below, one statement per
// accumulator or operand (WGSL has no arrays of cooperative matrices that stay in registers;
// see `coop_source` in kernels.rs).
//
// A workgroup is four subgroups of COOP_SG threads; subgroup s owns the quarter of
// COOP_ROWS / 2 rows (s % 2) by COOP_TOKENS / 2 tokens (s / 2), that is
// COOP_ROWS / 32 x COOP_TOKENS / 32 accumulator matrices. k is walked one stage of
// COOP_UNITS units at a time: the workgroup dequantizes the tile's rows of the stage
// (`load_unit`, once per tile as in `matmul_tiled`) and the tokens' x values of the stage into
// workgroup memory as f16, then each subgroup multiplies the stage's 16-deep slices of them
// into its accumulators. Units past k (the last stage of a k that is not a multiple of
// COOP_UNITS units) are staged as zeros. At the end each accumulator goes through workgroup
// memory to the threads, which write the rows and tokens inside the chunk and the batch as
// `tiled_store` does (plain or added, at out_offset).
//
// Workgroup memory: the f16 tiles (2 (COOP_ROWS + COOP_TOKENS) COOP_STRIDE bytes) and one f32
// 16x16 matrix per subgroup (4 KiB): 14 KiB for the default 64 x 64 tile of one unit, within
// WebGPU's default 16 KiB; the device checks larger shapes against the adapter's limit
// (device.rs). Cooperative loads need their pointer and stride aligned to 16 bytes, so a
// staged row is COOP_STRIDE = 32 COOP_UNITS + 8 halves (the stage and 8 of padding, which
// also puts the 8 rows that one 16-byte-per-row matrix load reads at a time into different
// banks).

// The subgroup size the pipeline is built for (8, 16 or 32; fixed on the adapter, checked by
// the host): the workgroup is exactly four subgroups.
override COOP_SG: u32 = 32u;
const COOP_DEPTH: u32 = 32u * COOP_UNITS;
const COOP_STRIDE: u32 = COOP_DEPTH + 8u;
// Row r's stage at r * COOP_STRIDE.
var<workgroup> coop_w: array<f16, COOP_ROWS * COOP_STRIDE>;
// Token t's stage at t * COOP_STRIDE.
var<workgroup> coop_x: array<f16, COOP_TOKENS * COOP_STRIDE>;
// One 16x16 matrix per subgroup, column-major.
var<workgroup> coop_out: array<f32, 1024>;

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

// Stages units `s COOP_UNITS ..` of the tile's rows and tokens into coop_w and coop_x as f16.
fn coop_stage(li: u32, s: u32, first_row: u32, t0: u32, n: u32) {
    let units = p.k / 32u;
    let kv = p.k / 4u;
    let threads = 4u * COOP_SG;
    // Consecutive threads take consecutive units of a row (adjacent in memory). Rows past the
    // chunk recompute the last one; neither they nor tokens past the batch are written out.
    for (var i = li; i < COOP_ROWS * COOP_UNITS; i += threads) {
        let r = i / COOP_UNITS;
        let j = i % COOP_UNITS;
        let u = s * COOP_UNITS + j;
        let o = r * COOP_STRIDE + 32u * j;
        if (u < units) {
            let wv = load_unit(min(first_row + r, p.rows - 1u), u);
            for (var q = 0u; q < 8u; q++) {
                let h = vec4<f16>(wv[q]);
                coop_w[o + 4u * q] = h.x;
                coop_w[o + 4u * q + 1u] = h.y;
                coop_w[o + 4u * q + 2u] = h.z;
                coop_w[o + 4u * q + 3u] = h.w;
            }
        } else {
            for (var q = 0u; q < 32u; q++) {
                coop_w[o + q] = 0.0h;
            }
        }
    }
    // Eight threads read one token's 128 bytes of a unit; tokens past the batch reread the
    // last one (x holds only n tokens).
    for (var i = li; i < COOP_TOKENS * COOP_UNITS * 8u; i += threads) {
        let t = i / (COOP_UNITS * 8u);
        let v = i % (COOP_UNITS * 8u);
        var h = vec4<f16>();
        if (s * COOP_UNITS + v / 8u < units) {
            h = vec4<f16>(x[min(t0 + t, n - 1u) * kv + s * COOP_UNITS * 8u + v]);
        }
        let o = t * COOP_STRIDE + 4u * v;
        coop_x[o] = h.x;
        coop_x[o + 1u] = h.y;
        coop_x[o + 2u] = h.z;
        coop_x[o + 3u] = h.w;
    }
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
    let stages = (p.k / 32u + COOP_UNITS - 1u) / COOP_UNITS;
    // This subgroup's quarter of the tile: its blocks of 16 rows in coop_w from a_base, of 16
    // tokens in coop_x from b_base.
    let a_base = (sg % 2u) * (COOP_ROWS / 2u) * COOP_STRIDE;
    let b_base = (sg / 2u) * (COOP_TOKENS / 2u) * COOP_STRIDE;
    // Host-written: accumulator c<i>_<j> (zero) for row block i and token block j.
    $ACCUMULATORS
    for (var s = 0u; s < stages; s++) {
        // Every subgroup is done with the previous stage's tiles before they are overwritten.
        workgroupBarrier();
        coop_stage(li, s, first_row, t0, n);
        workgroupBarrier();
        for (var kk = 0u; kk < COOP_DEPTH; kk += 16u) {
            // A (16 rows x 16 k): row-major in coop_w. B (16 k x 16 tokens): token t's k
            // values are consecutive, so column-major in coop_x.
            // Host-written: a<i> loaded for each row block, b<j> for each token block, then
            // c<i>_<j> += a<i> b<j> for each accumulator.
            $PRODUCTS
        }
    }
    let row0 = first_row + (sg % 2u) * (COOP_ROWS / 2u);
    let tok0 = t0 + (sg / 2u) * (COOP_TOKENS / 2u);
    // Host-written: coop_write of each accumulator at rows row0 + 16 i, tokens tok0 + 16 j.
    $WRITES
}
