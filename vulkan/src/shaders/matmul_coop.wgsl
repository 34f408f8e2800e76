// ---- Prompt batches of many tokens on cooperative matrices (matrix cores) ----
// The same product and outputs as `matmul_tiled` (matmul.wgsl), with the multiply-adds done
// by 16x16x16 cooperative matrices: f16 operands, f32 sums. Appended to a type's matmul
// module (it uses that module's bindings, Params, `load_unit` and ROWS_PER_Y) behind
// `enable f16; enable wgpu_cooperative_matrix;`; kernels.rs builds it only where the device
// lists that configuration (see `cooperative_prefill` in device.rs).
//
// The tile's shape comes from the host (kernels.rs `CoopShape`, tuning keys `cooptile`,
// `coopk` and `coopvec`), which puts these constants in front of this file:
//   COOP_ROWS (64 or 128) rows by COOP_TOKENS (32, 64 or 128) tokens per workgroup;
//   COOP_UNITS (1, 2 or 4) 32-weight units of k staged per pair of barriers;
//   COOP_VEC (2 or 4) halves per element of the staged tiles, with `CoopVec` that vector type
//   and `put_w`/`put_x`, which store four halves into the tiles;
//   COOP_X16: whether the tokens' x is staged from `x16`, the step's x converted to f16 once
//   per product by `coop_x_f16` (tuning key `coopx16`), instead of from the f32 x. Every row
//   tile reads the whole x of its tokens, so x is read (rows / COOP_ROWS) times per product:
//   for most products more bytes than the weights; in f16 half as many.
// The host also writes the three lines marked with a dollar sign below, one statement per
// accumulator or operand (WGSL has no arrays of cooperative matrices that stay in registers;
// see `coop_source` in kernels.rs).
//
// A workgroup is COOP_SGS (4 or 8, tuning key `coopsg`) subgroups of COOP_SG threads,
// two across the rows and COOP_SGS / 2 across the tokens: subgroup s owns COOP_ROWS / 2 rows
// (half s % 2) by COOP_SG_TOKENS = COOP_TOKENS / (COOP_SGS / 2) tokens (block s / 2), that is
// COOP_ROWS / 32 x COOP_SG_TOKENS / 16 accumulator matrices. With eight subgroups a tile of
// twice the tokens keeps each subgroup's accumulators, and its weights are dequantized once
// for twice the tokens (the staging's dequantization costs about as much as the products). k is walked one stage of
// COOP_UNITS units at a time: the workgroup dequantizes the tile's rows of the stage
// (`load_unit`, once per tile as in `matmul_tiled`) and the tokens' x values of the stage into
// workgroup memory as f16, then each subgroup multiplies the stage's 16-deep slices of them
// into its accumulators. Units past k (the last stage of a k that is not a multiple of
// COOP_UNITS units) are staged as zeros. At the end each accumulator goes through workgroup
// memory to the threads, which write the rows and tokens inside the chunk and the batch as
// `tiled_store` does (plain or added, at out_offset).
//
// Workgroup memory: the f16 tiles (2 (COOP_ROWS + COOP_TOKENS) COOP_STRIDE bytes, twice that
// with two buffers) and one f32
// 16x16 matrix per subgroup (1 KiB each): 14 KiB for the default 64 x 64 tile of one unit, within
// WebGPU's default 16 KiB; the device checks larger shapes against the adapter's limit
// (device.rs). Cooperative loads need their pointer and stride aligned to 16 bytes, so a
// staged row is COOP_STRIDE = 32 COOP_UNITS + 8 halves (the stage and 8 of padding, which
// also puts the 8 rows that one 16-byte-per-row matrix load reads at a time into different
// banks).
//
// The tiles are arrays of COOP_VEC-half vectors (`CoopVec`, vec2<f16> or vec4<f16>, from the
// host: tuning key `coopvec`), not of halves: a thread stages four values with one or two
// stores instead of four, and the matrix loads take a pointer to a vector and a stride in
// vectors (as llama.cpp's mul_mm.comp loads its f16vec2 tiles). Offsets into them are counted
// in vectors: COOP_SV vectors per staged row.
//
// Register prefetch (COOP_FETCH, tuning key `coopfetch`): without it, a thread staging stage
// s + 1 loads its weight unit and x words, waits for them, decodes and stores them, and only
// then runs the products of stage s, so every stage waits for one global-memory latency that
// only other workgroups' warps hide. With it, the stage loop issues the loads of stage s + 1
// into registers (`coop_fetch`: raw words, the weight type's `unit_raw`, no arithmetic on
// them), runs the products of stage s while they are in flight, and then decodes them to f16
// into workgroup memory (`coop_put`: `raw_values`, the same values as `load_unit`). The host
// writes `CoopFetched` (the registers of one stage: COOP_FETCH_W weight units and
// COOP_FETCH_X x words per thread, ceil(items / threads) each for the subgroup size the
// pipeline is built for) and `coop_fetch`/`coop_put`, one statement per register, as it
// writes the products (WGSL's loops over arrays become loops that the drivers seen so far do
// not unroll, and an array indexed in a loop leaves registers); threads past the end of the
// items load and store nothing.

// The subgroup size the pipeline is built for (8, 16 or 32; fixed on the adapter, checked by
// the host): the workgroup is exactly COOP_SGS subgroups.
override COOP_SG: u32 = 32u;
const COOP_DEPTH: u32 = 32u * COOP_UNITS;
const COOP_STRIDE: u32 = COOP_DEPTH + 8u;
const COOP_SV: u32 = COOP_STRIDE / COOP_VEC;
const COOP_SG_TOKENS: u32 = COOP_TOKENS / (COOP_SGS / 2u);
// Row r's stage at r * COOP_SV, in buffer b (of COOP_BUFS) from b * COOP_ROWS * COOP_SV.
var<workgroup> coop_w: array<CoopVec, COOP_BUFS * COOP_ROWS * COOP_SV>;
// Token t's stage at t * COOP_SV, in buffer b from b * COOP_TOKENS * COOP_SV.
var<workgroup> coop_x: array<CoopVec, COOP_BUFS * COOP_TOKENS * COOP_SV>;
// One 16x16 matrix per subgroup, column-major.
var<workgroup> coop_out: array<f32, 256u * COOP_SGS>;
// The step's x in f16, eight values per word: token t's value i in half i % 8 of word
// t * p.k / 8 + i / 8 (written by `coop_x_f16`, read by the staging where COOP_X16).
@group(0) @binding(16) var<storage, read_write> x16: array<vec4<u32>>;

// Converts the step's x to f16 (`x16`) for the products that follow: one thread per 8 values
// (x = words / 64 workgroups, y = token), rounded and packed by `pack_f16` (f16_pack.wgsl).
@compute @workgroup_size(64)
fn coop_x_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let words = p.k / 8u;
    let t = gid.y;
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    if (gid.x >= words || t >= n) {
        return;
    }
    let i = t * (p.k / 4u) + 2u * gid.x;
    x16[t * words + gid.x] = vec4<u32>(pack_f16(x[i]), pack_f16(x[i + 1u]));
}

// Four halves of x16 as f16 (exact: see `pack_f16`).
fn unpack_f16(w: vec2<u32>) -> vec4<f16> {
    return vec4<f16>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)));
}

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

// Stages units `s COOP_UNITS ..` of the tile's rows and tokens into buffer `buf` of coop_w
// and coop_x as f16 (put_w and put_x store four values at a vector offset; the host writes
// them for COOP_VEC).
fn coop_stage(li: u32, s: u32, first_row: u32, t0: u32, n: u32, buf: u32) {
    let w_buf = buf * COOP_ROWS * COOP_SV;
    let x_buf = buf * COOP_TOKENS * COOP_SV;
    let units = p.k / 32u;
    let kv = p.k / 4u;
    let threads = COOP_SGS * COOP_SG;
    // Consecutive threads take consecutive units of a row (adjacent in memory). Rows past the
    // chunk recompute the last one; neither they nor tokens past the batch are written out.
    for (var i = li; i < COOP_ROWS * COOP_UNITS; i += threads) {
        let r = i / COOP_UNITS;
        let j = i % COOP_UNITS;
        let u = s * COOP_UNITS + j;
        let o = w_buf + r * COOP_SV + 32u / COOP_VEC * j;
        if (u < units) {
            let wv = load_unit(min(first_row + r, p.rows - 1u), u);
            for (var q = 0u; q < 8u; q++) {
                put_w(o + 4u / COOP_VEC * q, vec4<f16>(wv[q]));
            }
        } else {
            for (var q = 0u; q < 8u; q++) {
                put_w(o + 4u / COOP_VEC * q, vec4<f16>());
            }
        }
    }
    // Tokens past the batch reread the last one (x holds only n tokens).
    if (COOP_X16) {
        // Four threads read one token's 64 bytes of a unit, eight halves each.
        for (var i = li; i < COOP_TOKENS * COOP_UNITS * 4u; i += threads) {
            let t = i / (COOP_UNITS * 4u);
            let v = i % (COOP_UNITS * 4u);
            var h = vec4<u32>();
            if (s * COOP_UNITS + v / 4u < units) {
                h = x16[min(t0 + t, n - 1u) * (p.k / 8u) + s * COOP_UNITS * 4u + v];
            }
            let o = x_buf + t * COOP_SV + 8u / COOP_VEC * v;
            put_x(o, unpack_f16(h.xy));
            put_x(o + 4u / COOP_VEC, unpack_f16(h.zw));
        }
        return;
    }
    // Eight threads read one token's 128 bytes of a unit.
    for (var i = li; i < COOP_TOKENS * COOP_UNITS * 8u; i += threads) {
        let t = i / (COOP_UNITS * 8u);
        let v = i % (COOP_UNITS * 8u);
        var h = vec4<f16>();
        if (s * COOP_UNITS + v / 8u < units) {
            h = vec4<f16>(x[min(t0 + t, n - 1u) * kv + s * COOP_UNITS * 8u + v]);
        }
        put_x(x_buf + t * COOP_SV + 4u / COOP_VEC * v, h);
    }
}

// The raw words of weight staging item `i` (row i / COOP_UNITS, unit i % COOP_UNITS of stage
// `s`, as `coop_stage` numbers them) for `coop_put_w`: zeros past the items and past k.
fn coop_fetch_w(i: u32, s: u32, first_row: u32) -> array<vec4<u32>, 8> {
    var raw: array<vec4<u32>, 8>;
    let u = s * COOP_UNITS + i % COOP_UNITS;
    if (i < COOP_ROWS * COOP_UNITS && u < p.k / 32u) {
        raw = unit_raw(min(first_row + i / COOP_UNITS, p.rows - 1u), u);
    }
    return raw;
}

// Decodes the words of weight item `i` of stage `s` to f16 into buffer `buf` of coop_w, as
// `coop_stage` stores `load_unit`'s values (zeros past k).
fn coop_put_w(raw: array<vec4<u32>, 8>, i: u32, s: u32, first_row: u32, buf: u32) {
    if (i >= COOP_ROWS * COOP_UNITS) {
        return;
    }
    let j = i % COOP_UNITS;
    let u = s * COOP_UNITS + j;
    let o = buf * COOP_ROWS * COOP_SV + (i / COOP_UNITS) * COOP_SV + 32u / COOP_VEC * j;
    if (u < p.k / 32u) {
        let wv = raw_values(raw, min(first_row + i / COOP_UNITS, p.rows - 1u), u);
        for (var q = 0u; q < 8u; q++) {
            put_w(o + 4u / COOP_VEC * q, vec4<f16>(wv[q]));
        }
    } else {
        for (var q = 0u; q < 8u; q++) {
            put_w(o + 4u / COOP_VEC * q, vec4<f16>());
        }
    }
}

// The x items of a stage as `coop_stage` numbers them: COOP_X_PER_UNIT (from the host) per
// token and unit, with COOP_X16 four (a vec4 of x16 words, eight halves), else eight (a vec4
// of f32, kept as its bits so that both fit one register type).
// The raw words of x item `i` of stage `s` (zeros past the items and past k; tokens past the
// batch reread the last one).
fn coop_fetch_x(i: u32, s: u32, t0: u32, n: u32) -> vec4<u32> {
    let t = i / (COOP_UNITS * COOP_X_PER_UNIT);
    let v = i % (COOP_UNITS * COOP_X_PER_UNIT);
    if (i >= COOP_TOKENS * COOP_UNITS * COOP_X_PER_UNIT || s * COOP_UNITS + v / COOP_X_PER_UNIT >= p.k / 32u) {
        return vec4<u32>();
    }
    if (COOP_X16) {
        return x16[min(t0 + t, n - 1u) * (p.k / 8u) + s * COOP_UNITS * 4u + v];
    }
    return bitcast<vec4<u32>>(x[min(t0 + t, n - 1u) * (p.k / 4u) + s * COOP_UNITS * 8u + v]);
}

// Stores x item `i` into buffer `buf` of coop_x as f16, as `coop_stage` does.
fn coop_put_x(h: vec4<u32>, i: u32, buf: u32) {
    if (i >= COOP_TOKENS * COOP_UNITS * COOP_X_PER_UNIT) {
        return;
    }
    let t = i / (COOP_UNITS * COOP_X_PER_UNIT);
    let v = i % (COOP_UNITS * COOP_X_PER_UNIT);
    let o = buf * COOP_TOKENS * COOP_SV + t * COOP_SV;
    if (COOP_X16) {
        put_x(o + 8u / COOP_VEC * v, unpack_f16(h.xy));
        put_x(o + 8u / COOP_VEC * v + 4u / COOP_VEC, unpack_f16(h.zw));
    } else {
        put_x(o + 4u / COOP_VEC * v, vec4<f16>(bitcast<vec4<f32>>(h)));
    }
}

@compute @workgroup_size(COOP_SGS * COOP_SG)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
               @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    // The host dispatches (row tiles, wrapped into y past ROWS_PER_Y) x (token tiles in z);
    // the workgroups are renumbered token-tile-fastest, so that the token tiles of one row
    // tile run at about the same time and all but the first read its weights from the L2
    // cache: numbered row-fastest, every token tile read the whole matrix from memory again.
    let linear = wid.x + groups.x * (wid.y + groups.y * wid.z);
    let first_row = (linear / groups.z) * COOP_ROWS;
    if (first_row >= p.rows) {
        return;
    }
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    let t0 = (linear % groups.z) * COOP_TOKENS;
    let stages = (p.k / 32u + COOP_UNITS - 1u) / COOP_UNITS;
    // This subgroup's part of the tile: its blocks of 16 rows in coop_w from a_first, of 16
    // tokens in coop_x from b_first (in the first buffer).
    let a_first = (sg % 2u) * (COOP_ROWS / 2u) * COOP_SV;
    let b_first = (sg / 2u) * COOP_SG_TOKENS * COOP_SV;
    // Host-written: accumulator c<i>_<j> (zero) for row block i and token block j.
    $ACCUMULATORS
    // Two buffers (COOP_BUFS = 2, tuning key `coopbuf`): stage s + 1 is staged into one while
    // the products of stage s read the other, with one barrier per stage, so that the
    // subgroups that have their loads go on to their products while the others still wait
    // for theirs. One buffer: every stage is staged, then multiplied, between two barriers.
    // With the prefetch (COOP_FETCH), the loads of stage s + 1 go to registers before the
    // products of stage s and are stored after them (two buffers) or after the barrier that
    // ends them (one buffer).
    var fetched: CoopFetched;
    if (COOP_FETCH) {
        fetched = coop_fetch(li, 0u, first_row, t0, n);
        if (COOP_BUFS > 1u) {
            coop_put(fetched, li, 0u, first_row, 0u);
            workgroupBarrier();
        }
    } else if (COOP_BUFS > 1u) {
        coop_stage(li, 0u, first_row, t0, n, 0u);
        workgroupBarrier();
    }
    for (var s = 0u; s < stages; s++) {
        let buf = s % COOP_BUFS;
        if (COOP_BUFS == 1u) {
            // Every subgroup is done with the previous stage's tiles before they are
            // overwritten.
            workgroupBarrier();
            if (COOP_FETCH) {
                coop_put(fetched, li, s, first_row, 0u);
            } else {
                coop_stage(li, s, first_row, t0, n, 0u);
            }
            workgroupBarrier();
            if (COOP_FETCH && s + 1u < stages) {
                fetched = coop_fetch(li, s + 1u, first_row, t0, n);
            }
        } else if (s + 1u < stages) {
            // The other buffer was last read by the products of stage s - 1, before the
            // barrier that ended it.
            if (COOP_FETCH) {
                fetched = coop_fetch(li, s + 1u, first_row, t0, n);
            } else {
                coop_stage(li, s + 1u, first_row, t0, n, 1u - buf);
            }
        }
        let a_base = a_first + buf * COOP_ROWS * COOP_SV;
        let b_base = b_first + buf * COOP_TOKENS * COOP_SV;
        for (var kk = 0u; kk < COOP_DEPTH; kk += 16u) {
            // A (16 rows x 16 k): row-major in coop_w. B (16 k x 16 tokens): token t's k
            // values are consecutive, so column-major in coop_x.
            // Host-written: a<i> loaded for each row block, b<j> for each token block, then
            // c<i>_<j> += a<i> b<j> for each accumulator.
            $PRODUCTS
        }
        if (COOP_BUFS > 1u) {
            if (COOP_FETCH && s + 1u < stages) {
                coop_put(fetched, li, s + 1u, first_row, 1u - buf);
            }
            // Stage s + 1 is staged, and every subgroup is done with stage s's buffer.
            workgroupBarrier();
        }
    }
    let row0 = first_row + (sg % 2u) * (COOP_ROWS / 2u);
    let tok0 = t0 + (sg / 2u) * COOP_SG_TOKENS;
    // Host-written: coop_write of each accumulator at rows row0 + 16 i, tokens tok0 + 16 j.
    $WRITES
}
