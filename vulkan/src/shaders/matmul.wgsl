// Dequantizing matrix products: y[t, row] (+)= sum_k W[row, k] * x[t, k].
// W stays in its GGUF block format (see quant.rs for the per-type layout) and is dequantized
// here, 32 weights ("one unit") at a time, by the type-specific `load_unit` appended below.
// The hot loops are written out by hand: the driver compilers seen so far do not unroll
// the loops WGSL becomes, and a loop of dependent loads leaves the memory system idle.
// `matmul`: one workgroup computes one row for up to TB tokens, so the row's bytes are read
// once per TB tokens (small prompt batches). `matmul_tiled`: tiles of rows x tokens staged in
// workgroup memory (prompt batches of many tokens). `matvec*`: one token (decode).

struct Params {
    rows: u32,        // rows of W in this chunk
    row_offset: u32,  // global index of the chunk's first row
    k: u32,           // elements per row (multiple of 32)
    out_stride: u32,  // floats per token in y
    aux: u32,         // type-specific: word offset of the scales section
    accumulate: u32,  // 1: add into y (fused residual add), 0: overwrite
    logit_rows: u32,  // 1: x holds step.out_rows rows (one per sequence's last token), not n_tokens
    out_offset: u32,  // float offset of this weight's first row within a token of y
    lanes: u32,       // threads per row (8, 16, 32 or 64)
    eps: f32,         // matvec_norm: the RMSNorm epsilon
    split: u32,       // mixed decode products: the rows of the first type (see MV_MIXED)
    aux_b: u32,       // mixed decode products: `aux` of the second type's buffer
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read> ids: array<u32>;
@group(0) @binding(6) var<storage, read> norm_w: array<vec4<f32>>;
// The same weight buffer as `w`, read 16 bytes at a time by the types whose 32-weight units
// are 16-byte aligned (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
@group(0) @binding(7) var<storage, read> w4: array<vec4<u32>>;

const WG: u32 = 64u;
const TB: u32 = 8u;
// Workgroups along x before wrapping to y: dispatch dimensions are limited to 65535.
const ROWS_PER_Y: u32 = 32768u;

var<workgroup> red: array<f32, 512>; // WG * TB

fn byte_at(word_base: u32, b: u32) -> u32 {
    return (w[word_base + (b >> 2u)] >> ((b & 3u) * 8u)) & 0xffu;
}

fn f16_at(word_base: u32, half_index: u32) -> f32 {
    return unpack2x16float(w[word_base + (half_index >> 1u)])[half_index & 1u];
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // p.lanes threads share one row (a power of two, 8..64, about the number of 32-weight
    // units in a row), so short rows do not leave most of the workgroup idle.
    let lanes = p.lanes;
    let rows_per_group = WG / lanes;
    let first_row = (wid.x + wid.y * ROWS_PER_Y) * rows_per_group;
    if (first_row >= p.rows) {
        return;
    }
    let row = first_row + lid.x / lanes;
    let lane = lid.x % lanes;
    let valid = row < p.rows;
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    let t0 = wid.z * TB;
    let tn = min(TB, n - t0);
    var acc: array<f32, 8>;
    for (var t = 0u; t < TB; t++) {
        acc[t] = 0.0;
    }
    let units = select(0u, p.k / 32u, valid);
    let kv = p.k / 4u;
    // Loops over t run to the constant TB with a test inside, so that the compiler unrolls
    // them and keeps acc in registers (a runtime bound makes acc a memory array).
    for (var u = lane; u < units; u += lanes) {
        let wv = load_unit(row, u);
        for (var t = 0u; t < TB; t++) {
            if (t >= tn) {
                break;
            }
            let xb = (t0 + t) * kv + u * 8u;
            var s = dot(wv[0], x[xb]);
            s += dot(wv[1], x[xb + 1u]);
            s += dot(wv[2], x[xb + 2u]);
            s += dot(wv[3], x[xb + 3u]);
            s += dot(wv[4], x[xb + 4u]);
            s += dot(wv[5], x[xb + 5u]);
            s += dot(wv[6], x[xb + 6u]);
            s += dot(wv[7], x[xb + 7u]);
            acc[t] += s;
        }
    }
    // Only the tn columns in use are reduced: decode (tn = 1) pays for one column.
    for (var t = 0u; t < TB; t++) {
        if (t < tn) {
            red[t * WG + lid.x] = acc[t];
        }
    }
    workgroupBarrier();
    for (var s = lanes / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var t = 0u; t < TB; t++) {
                if (t < tn) {
                    red[t * WG + lid.x] += red[t * WG + lid.x + s];
                }
            }
        }
        workgroupBarrier();
    }
    if (valid && lane < tn) {
        let t = lane;
        let sum = red[t * WG + lid.x - lane];
        let o = (t0 + t) * p.out_stride + p.out_offset + p.row_offset + row;
        if (p.accumulate != 0u) {
            y[o] += sum;
        } else {
            y[o] = sum;
        }
    }
}

// ---- Prompt batches of many tokens: the tiled product ----
// A workgroup computes a tile of TILE_ROWS = 64 rows by TILE_TOKENS = 32 tokens, walking k one
// 32-weight unit at a time. Per unit, every thread dequantizes one row's unit (`load_unit`,
// once per tile instead of once per token as in `matmul`) and loads four vec4 of x into
// workgroup memory; then each thread accumulates 8 rows x 4 tokens from there: per vec4 of k,
// 12 vec4 reads of workgroup memory for 32 dot products (128 FMAs), where `matmul` reads a
// vec4 of x from the storage buffer for every 4 weights. Thread (tr, tc) = (lid % 8, lid / 8)
// takes rows tr + 8i and tokens tc + 8m, so a subgroup's threads read 8 different rows and 4
// different tokens at a time (the others are broadcasts), which TILE_STRIDE spreads over
// different banks. The accumulators are vec4 per row (one component per token), indexed by
// constants only so that they stay in registers.
const TILE_ROWS: u32 = 64u;
const TILE_TOKENS: u32 = 32u;
// vec4 per row (token) in workgroup memory: the unit's 8 and one of padding, so that rows
// (tokens) 36 floats apart start in different banks.
const TILE_STRIDE: u32 = 9u;
var<workgroup> tile_w: array<vec4<f32>, 576>; // TILE_ROWS * TILE_STRIDE
var<workgroup> tile_x: array<vec4<f32>, 288>; // TILE_TOKENS * TILE_STRIDE

// Writes v[m] as token t + 8m of `row` (rows past the chunk and tokens past the batch are
// the recomputed or reread ones of the staging, not written).
fn tiled_store(row: u32, t: u32, n: u32, v: vec4<f32>) {
    if (row >= p.rows) {
        return;
    }
    for (var m = 0u; m < 4u; m++) {
        let tm = t + 8u * m;
        if (tm < n) {
            let o = tm * p.out_stride + p.out_offset + p.row_offset + row;
            if (p.accumulate != 0u) {
                y[o] += v[m];
            } else {
                y[o] = v[m];
            }
        }
    }
}

@compute @workgroup_size(64)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let first_row = (wid.x + wid.y * ROWS_PER_Y) * TILE_ROWS;
    if (first_row >= p.rows) {
        return;
    }
    let n = select(step.n_tokens, step.out_rows, p.logit_rows != 0u);
    let t0 = wid.z * TILE_TOKENS;
    let kv = p.k / 4u;
    let units = p.k / 32u;
    // Staging: thread i dequantizes row i of the tile (rows past the chunk recompute the last
    // one) and loads vec4 i % 8 of the unit for tokens i / 8 + 8m (tokens past the batch
    // reread the last one: x holds only n tokens), so 8 threads read a token's 128 bytes.
    let i = lid.x;
    let w_row = min(first_row + i, p.rows - 1u);
    let xj = i % 8u;
    let xt = i / 8u;
    let xb0 = min(t0 + xt, n - 1u) * kv + xj;
    let xb1 = min(t0 + xt + 8u, n - 1u) * kv + xj;
    let xb2 = min(t0 + xt + 16u, n - 1u) * kv + xj;
    let xb3 = min(t0 + xt + 24u, n - 1u) * kv + xj;
    let ws = i * TILE_STRIDE;
    let xs = xt * TILE_STRIDE + xj;
    let tr = lid.x % 8u;
    let tc = lid.x / 8u;
    let wb = tr * TILE_STRIDE;
    let xb = tc * TILE_STRIDE;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var wv = load_unit(w_row, 0u);
    var xv0 = x[xb0];
    var xv1 = x[xb1];
    var xv2 = x[xb2];
    var xv3 = x[xb3];
    for (var u = 0u; u < units; u++) {
        // Every thread is done with the previous unit's tile before it is overwritten.
        workgroupBarrier();
        tile_w[ws] = wv[0];
        tile_w[ws + 1u] = wv[1];
        tile_w[ws + 2u] = wv[2];
        tile_w[ws + 3u] = wv[3];
        tile_w[ws + 4u] = wv[4];
        tile_w[ws + 5u] = wv[5];
        tile_w[ws + 6u] = wv[6];
        tile_w[ws + 7u] = wv[7];
        tile_x[xs] = xv0;
        tile_x[xs + 8u * TILE_STRIDE] = xv1;
        tile_x[xs + 16u * TILE_STRIDE] = xv2;
        tile_x[xs + 24u * TILE_STRIDE] = xv3;
        workgroupBarrier();
        // The next unit's loads are in flight while this unit's products run.
        if (u + 1u < units) {
            wv = load_unit(w_row, u + 1u);
            let o = (u + 1u) * 8u;
            xv0 = x[xb0 + o];
            xv1 = x[xb1 + o];
            xv2 = x[xb2 + o];
            xv3 = x[xb3 + o];
        }
        for (var j = 0u; j < 8u; j++) {
            // Column m: tokens tc + 8m at k = 4j..4j+3; w * xm = the row's dot with each.
            let xm = mat4x4<f32>(tile_x[xb + j], tile_x[xb + 8u * TILE_STRIDE + j],
                                 tile_x[xb + 16u * TILE_STRIDE + j], tile_x[xb + 24u * TILE_STRIDE + j]);
            a0 += tile_w[wb + j] * xm;
            a1 += tile_w[wb + 8u * TILE_STRIDE + j] * xm;
            a2 += tile_w[wb + 16u * TILE_STRIDE + j] * xm;
            a3 += tile_w[wb + 24u * TILE_STRIDE + j] * xm;
            a4 += tile_w[wb + 32u * TILE_STRIDE + j] * xm;
            a5 += tile_w[wb + 40u * TILE_STRIDE + j] * xm;
            a6 += tile_w[wb + 48u * TILE_STRIDE + j] * xm;
            a7 += tile_w[wb + 56u * TILE_STRIDE + j] * xm;
        }
    }
    let row = first_row + tr;
    let t = t0 + tc;
    tiled_store(row, t, n, a0);
    tiled_store(row + 8u, t, n, a1);
    tiled_store(row + 16u, t, n, a2);
    tiled_store(row + 24u, t, n, a3);
    tiled_store(row + 32u, t, n, a4);
    tiled_store(row + 40u, t, n, a5);
    tiled_store(row + 48u, t, n, a6);
    tiled_store(row + 56u, t, n, a7);
}

// Embedding lookup: y[t, :] = W[ids[t], :] for the ids that fall in this chunk.
@compute @workgroup_size(64)
fn get_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x;
    if (t >= step.n_tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.row_offset || id >= p.row_offset + p.rows) {
        return;
    }
    let row = id - p.row_offset;
    let units = p.k / 32u;
    for (var u = lid.x; u < units; u += WG) {
        var wv = load_unit(row, u);
        let base = t * p.k + u * 32u;
        for (var j = 0u; j < 8u; j++) {
            y[base + j * 4u] = wv[j].x;
            y[base + j * 4u + 1u] = wv[j].y;
            y[base + j * 4u + 2u] = wv[j].z;
            y[base + j * 4u + 3u] = wv[j].w;
        }
    }
}

// ---- Decode: the matrix-vector product of one token (x and y hold token 0 only) ----
// A workgroup of MV_WG threads computes MV_ROWS = 4 * ROW_GROUPS consecutive rows. Every
// thread walks the rows' 32-weight units with a stride of MV_WG: it loads the unit's 32 x
// values once and uses them for every row (four rows' loads in flight at a time), and the
// per-thread sums are reduced with `reduce_rows` (subgroup operations where the adapter has
// them). Every workgroup reads all of x (and for matvec_norm the norm weights) and, with
// MV_DP4A, quantizes it, so tall matrices use ROW_GROUPS = 4: x traffic from L2 per weight
// byte drops fourfold (measured on the H200: with 4 rows per workgroup the FFN and output
// products took the same time for Q4_0 as for Q8_0, bound by x reads). With 64 threads a
// workgroup of 16 rows has a quarter of the warps of four 4-row workgroups and each thread
// walks its units for 16 rows one after another; MV_WG = 128 or 256 (`mvwg=`, tall
// pipelines only) gives the 16 rows as many threads as those four workgroups had, each
// thread taking fewer units of k. The entry points differ only in how x is read and where the
// result goes, so that the decode step needs no separate RMSNorm, SiLU or RoPE dispatch:
//   matvec            x as is;
//   matvec_norm       RMSNorm(x) * norm_w: the products use x * norm_w and the row sums are
//                     multiplied by 1 / rms(x) at the end; the sum of squares comes from the
//                     x values each thread loads for its units anyway (the units of a row
//                     cover x exactly once per workgroup), so nothing waits for the norm
//                     before the weight loads;
//   matvec_glu        silu(gate) * up, x holding [gate (k values) | up (k values)];
//   matvec_norm_rope  matvec_norm of the q|k|v matrix followed by RoPE and the K/V store of
//                     rope.wgsl (interleaved pairs, one token): rotated q goes to y, rotated
//                     k and v to the caches at the token's position in its slot. A workgroup's rows start
//                     at an even row (MV_ROWS and the chunk offsets are even, checked on the
//                     host), so both values of each rotated pair are in the same workgroup;
//   matvec_norm_glu   matvec_norm of the FFN's gate|up matrix uploaded with its rows
//                     interleaved (row 2j = gate j, row 2j + 1 = up j, pairs in one workgroup
//                     as above), followed by SiLU·mul: y[j] = silu(gate j) * up j, so that the
//                     down product reads the activation (half the x of [gate | up], no exp).

// Groups of four rows per workgroup, 1, 2 or 4 (a pipeline constant).
override ROW_GROUPS: u32 = 1u;
// 32-weight units of a row each thread takes per loop iteration, 1 or 2 (a pipeline constant).
override MV_UNITS: u32 = 1u;
// Threads of a decode workgroup (the matvec* entry points): 64, 128 or 256, a multiple of 64
// (a pipeline constant; the reductions of reduce_*.wgsl sum over MV_WG threads). The other
// entry points, matvec_multi's included, keep WG = 64 and leave MV_WG at its default.
override MV_WG: u32 = 64u;
override MV_ROWS: u32 = 4u * ROW_GROUPS;
var<private> mv_acc: array<f32, 16>;
// The token whose x a matrix-vector workgroup reads and whose y it writes: 0 except in a
// `matvec` step of several tokens.
var<private> mv_token: u32;

// Mixed products (MV_MIXED, a module constant: true only in the modules kernels.rs builds
// for two weight types): one dispatch over two matrices of different types written side by
// side, as the q|k|v of a Q4_K_M file whose v is Q6_K. Rows below p.split are the first
// type's (`unit_dot`, buffer `w`/`w4`), rows from p.split the second's (`unit_dot_b`, its
// own buffer `wb`/`w4b` and scales offset p.aux_b; mixed.wgsl and the renamed copy of that
// type's functions). Other modules define unit_dot_b as unit_dot and never take that path.

// Q8_0, Q4_0, Q4_K, Q5_K and Q6_K products (a pipeline constant, set for those types only): x is quantized
// to int8 per unit (scale = largest |x| / 127, round to nearest even) and each 4-weight
// word is multiplied with integer dot products (dot4I8Packed, one DP4A instruction where
// the device has VK_KHR_shader_integer_dot_product) instead of converting every weight to
// float, as llama.cpp's and candle's quantized decode products do with their Q8 activations.
override MV_DP4A: bool = false;

// The 32 x values of one unit as the entry point transforms them, with what the products
// of every row share: their sum, (mode 1) the sum of the squares of the untransformed
// values, and (MV_DP4A) the values as int8, four per word, with their scale and sum.
struct XUnit {
    v: array<vec4<f32>, 8>,
    sq: f32,
    sum: f32,
    sum_lo: f32, // of the first 16 values (Q6_K's f32 path: a scale per 16)
    q: array<u32, 8>,
    qd: f32,
    qsum: i32,
    qsum_lo: i32, // of the first 16 values (Q6_K has a scale per 16)
}

// One 32-weight unit of one row as the type's `w_unit` loads it (and decodes where that is
// cheap), for its `w_dot` to multiply with the x of one token: the quants four to a word in
// q (the int8 types: bytes as dot4I8Packed takes them, elements 0..15 in q[0] and 16..31 in
// q[1]; the float types their raw words) and up to four scales in s. `unit_dot` is
// `w_dot(w_unit(..))`; the multi-token kernel calls `w_unit` once per unit and row and
// `w_dot` once per token, so the arithmetic per token is the one-token kernel's.
struct WUnit {
    q: array<vec4<u32>, 8>,
    s: vec4<f32>,
}

fn x_finish(v: array<vec4<f32>, 8>, sq: f32) -> XUnit {
    var o: XUnit;
    o.v = v;
    o.sq = sq;
    o.sum_lo = dot((v[0] + v[1]) + (v[2] + v[3]), vec4<f32>(1.0));
    o.sum = o.sum_lo + dot((v[4] + v[5]) + (v[6] + v[7]), vec4<f32>(1.0));
    if (MV_DP4A) {
        let m = max(max(max(abs(v[0]), abs(v[1])), max(abs(v[2]), abs(v[3]))),
                    max(max(abs(v[4]), abs(v[5])), max(abs(v[6]), abs(v[7]))));
        let amax = max(max(m.x, m.y), max(m.z, m.w));
        let inv = select(0.0, 127.0 / amax, amax > 0.0);
        o.qd = amax / 127.0;
        let q0 = vec4<i32>(round(v[0] * inv));
        let q1 = vec4<i32>(round(v[1] * inv));
        let q2 = vec4<i32>(round(v[2] * inv));
        let q3 = vec4<i32>(round(v[3] * inv));
        let q4 = vec4<i32>(round(v[4] * inv));
        let q5 = vec4<i32>(round(v[5] * inv));
        let q6 = vec4<i32>(round(v[6] * inv));
        let q7 = vec4<i32>(round(v[7] * inv));
        o.q = array<u32, 8>(pack4xI8(q0), pack4xI8(q1), pack4xI8(q2), pack4xI8(q3),
                            pack4xI8(q4), pack4xI8(q5), pack4xI8(q6), pack4xI8(q7));
        let lo = (q0 + q1) + (q2 + q3);
        let t = lo + ((q4 + q5) + (q6 + q7));
        o.qsum = (t.x + t.y) + (t.z + t.w);
        o.qsum_lo = (lo.x + lo.y) + (lo.z + lo.w);
    }
    return o;
}

fn silu4(a: vec4<f32>) -> vec4<f32> {
    // As silu_mul.wgsl: a / (1 + exp(-a)).
    return a / (1.0 + exp(-a));
}

fn x_unit(mode: u32, u: u32) -> XUnit {
    let b = u * 8u;
    let xb = mv_token * (p.k / 4u) + b;
    let r = array<vec4<f32>, 8>(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u], x[xb + 4u], x[xb + 5u], x[xb + 6u], x[xb + 7u]);
    if (mode == 1u) {
        let sq = ((dot(r[0], r[0]) + dot(r[1], r[1])) + (dot(r[2], r[2]) + dot(r[3], r[3])))
            + ((dot(r[4], r[4]) + dot(r[5], r[5])) + (dot(r[6], r[6]) + dot(r[7], r[7])));
        return x_finish(array<vec4<f32>, 8>(r[0] * norm_w[b], r[1] * norm_w[b + 1u], r[2] * norm_w[b + 2u],
                                            r[3] * norm_w[b + 3u], r[4] * norm_w[b + 4u], r[5] * norm_w[b + 5u],
                                            r[6] * norm_w[b + 6u], r[7] * norm_w[b + 7u]), sq);
    }
    if (mode == 2u) {
        let ub = p.k / 4u + b;
        return x_finish(array<vec4<f32>, 8>(silu4(r[0]) * x[ub], silu4(r[1]) * x[ub + 1u], silu4(r[2]) * x[ub + 2u],
                                            silu4(r[3]) * x[ub + 3u], silu4(r[4]) * x[ub + 4u], silu4(r[5]) * x[ub + 5u],
                                            silu4(r[6]) * x[ub + 6u], silu4(r[7]) * x[ub + 7u]), 0.0);
    }
    return x_finish(r, 0.0);
}

fn dot8(a: array<vec4<f32>, 8>, b: array<vec4<f32>, 8>) -> f32 {
    return dot(a[0], b[0]) + dot(a[1], b[1]) + dot(a[2], b[2]) + dot(a[3], b[3])
        + dot(a[4], b[4]) + dot(a[5], b[5]) + dot(a[6], b[6]) + dot(a[7], b[7]);
}

// Four consecutive rows' dot products with one unit of x (rows past `last` read row `last`).
fn group4(f: u32, last: u32, u: u32, xu: XUnit) -> vec4<f32> {
    return vec4<f32>(unit_dot(min(f, last), u, xu), unit_dot(min(f + 1u, last), u, xu),
                     unit_dot(min(f + 2u, last), u, xu), unit_dot(min(f + 3u, last), u, xu));
}

// group4 for the second part of a mixed product (rows counted from p.split, unit_dot_b).
fn group4_b(f: u32, last: u32, u: u32, xu: XUnit) -> vec4<f32> {
    return vec4<f32>(unit_dot_b(min(f, last), u, xu), unit_dot_b(min(f + 1u, last), u, xu),
                     unit_dot_b(min(f + 2u, last), u, xu), unit_dot_b(min(f + 3u, last), u, xu));
}

// The dot product of 16 unsigned bytes (four to a word, element i in byte i) with 16 values
// of x: the f32 unit products of Q4_0 and the K-quants, which apply the scale once per sum.
fn bytes_dot16(q: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return (dot(vec4<f32>(unpack4xU8(q.x)), x0) + dot(vec4<f32>(unpack4xU8(q.y)), x1))
        + (dot(vec4<f32>(unpack4xU8(q.z)), x2) + dot(vec4<f32>(unpack4xU8(q.w)), x3));
}

// Thread r (< MV_ROWS) returns row first + r of the product; the others an unspecified value.
// Call from uniform control flow.
fn matvec_rows(first: u32, l: Lanes, mode: u32) -> f32 {
    // Rows past the end recompute the last row (no branch around the loads) and are not
    // written. MV_UNITS = 2: every thread takes two 32-weight units per iteration while
    // the row has them, so that twice the weight bytes are in flight. The accumulators are
    // vec4 per group of four rows, indexed by constants only, so that they stay in
    // registers (a dynamically indexed private array can live in local memory).
    let last = p.rows - 1u;
    let units = p.k / 32u;
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    var sq = 0.0;
    var u = l.li;
    if (MV_MIXED && first >= p.split) {
        // The second part of a mixed product (rows p.split.., its own type and buffer: see
        // MV_MIXED). Workgroups never straddle the split (the host checks that it is a
        // multiple of MV_ROWS), so the branch is uniform and each loop keeps its loads
        // written out; one unit per iteration whatever MV_UNITS.
        let fb = first - p.split;
        let lastb = last - p.split;
        for (; u < units; u += MV_WG) {
            let xu = x_unit(mode, u);
            sq += xu.sq;
            g0 += group4_b(fb, lastb, u, xu);
            if (ROW_GROUPS > 1u) {
                g1 += group4_b(fb + 4u, lastb, u, xu);
            }
            if (ROW_GROUPS > 2u) {
                g2 += group4_b(fb + 8u, lastb, u, xu);
                g3 += group4_b(fb + 12u, lastb, u, xu);
            }
        }
    } else {
        // Pairs of units while both are in the row (MV_UNITS = 2), then single units.
        if (MV_UNITS > 1u) {
            for (; u + MV_WG < units; u += 2u * MV_WG) {
                let ua = x_unit(mode, u);
                let ub = x_unit(mode, u + MV_WG);
                sq += ua.sq + ub.sq;
                g0 += group4(first, last, u, ua) + group4(first, last, u + MV_WG, ub);
                if (ROW_GROUPS > 1u) {
                    g1 += group4(first + 4u, last, u, ua) + group4(first + 4u, last, u + MV_WG, ub);
                }
                if (ROW_GROUPS > 2u) {
                    g2 += group4(first + 8u, last, u, ua) + group4(first + 8u, last, u + MV_WG, ub);
                    g3 += group4(first + 12u, last, u, ua) + group4(first + 12u, last, u + MV_WG, ub);
                }
            }
        }
        for (; u < units; u += MV_WG) {
            let xu = x_unit(mode, u);
            sq += xu.sq;
            g0 += group4(first, last, u, xu);
            if (ROW_GROUPS > 1u) {
                g1 += group4(first + 4u, last, u, xu);
            }
            if (ROW_GROUPS > 2u) {
                g2 += group4(first + 8u, last, u, xu);
                g3 += group4(first + 12u, last, u, xu);
            }
        }
    }
    var scale = 1.0;
    if (mode == 1u) {
        scale = 1.0 / sqrt(reduce_all(sq, l) / f32(p.k) + p.eps);
    }
    mv_acc[0] = g0.x; mv_acc[1] = g0.y; mv_acc[2] = g0.z; mv_acc[3] = g0.w;
    mv_acc[4] = g1.x; mv_acc[5] = g1.y; mv_acc[6] = g1.z; mv_acc[7] = g1.w;
    mv_acc[8] = g2.x; mv_acc[9] = g2.y; mv_acc[10] = g2.z; mv_acc[11] = g2.w;
    mv_acc[12] = g3.x; mv_acc[13] = g3.y; mv_acc[14] = g3.z; mv_acc[15] = g3.w;
    return reduce_rows(l) * scale;
}

// Thread li (< MV_ROWS) writes (or, with p.accumulate, adds) its row first + li of token t.
fn store_row(t: u32, first: u32, total: f32, l: Lanes) {
    let row = first + l.li;
    if (l.li < MV_ROWS && row < p.rows) {
        let o = t * p.out_stride + p.out_offset + p.row_offset + row;
        if (p.accumulate != 0u) {
            y[o] += total;
        } else {
            y[o] = total;
        }
    }
}

fn matvec_body(wid: vec3<u32>, l: Lanes, mode: u32) {
    let first = (wid.x + wid.y * ROWS_PER_Y) * MV_ROWS;
    if (first >= p.rows) {
        return;
    }
    store_row(mv_token, first, matvec_rows(first, l, mode), l);
}

// `matvec` also serves a step of a few tokens (a batched decode step: one token per
// sequence), dispatched with z = the number of tokens: every token's product is then the
// arithmetic of its one-token step. The workgroups are numbered token-fastest, so that the
// workgroups of one group of rows run at about the same time and all but the first token
// read the rows' weights from the L2 cache, not from memory.
@compute @workgroup_size(MV_WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, l: Lanes) {
    let linear = wid.x + groups.x * (wid.y + groups.y * wid.z);
    mv_token = linear % groups.z;
    let group = linear / groups.z;
    matvec_body(vec3<u32>(group % ROWS_PER_Y, group / ROWS_PER_Y, 0u), l, 0u);
}

@compute @workgroup_size(MV_WG)
fn matvec_norm(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    matvec_body(wid, l, 1u);
}

@compute @workgroup_size(MV_WG)
fn matvec_glu(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    matvec_body(wid, l, 2u);
}

// matvec_norm_rope's extra bindings: the layer's caches, the cos/sin table and rope.wgsl's
// parameters (the same buffers the rope kernel binds).
struct RopeParams {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    neox: u32,        // always 0 here (the host uses the rope kernel for NeoX pairs)
    cache_base: u32,
    ctx: u32,
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(8) var<storage, read_write> kcache: array<u32>;  // f16 pairs
@group(0) @binding(9) var<storage, read_write> vcache: array<u32>;  // f16 pairs
@group(0) @binding(10) var<storage, read> cos_sin: array<vec2<f32>>; // [ctx, hd/2]
@group(0) @binding(11) var<uniform> rp: RopeParams;
// The token's (position in its sequence, first cache position of its slot), as rope.wgsl.
@group(0) @binding(12) var<storage, read> rope_rows: array<vec2<u32>>;
// The workgroup's row results, so that each thread sees the other value of its pair.
var<workgroup> mv_pair: array<f32, 16>;

// The RMSNorm'd product's rows of this workgroup (`matvec_rows` mode 1), also written to
// `mv_pair` so that each thread can read the other row of its pair. Call from uniform
// control flow (it has a barrier).
fn matvec_rows_shared(first: u32, l: Lanes) -> f32 {
    let total = matvec_rows(first, l, 1u);
    if (l.li < MV_ROWS) {
        mv_pair[l.li] = total;
    }
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(MV_WG)
fn matvec_norm_rope(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    let first = (wid.x + wid.y * ROWS_PER_Y) * MV_ROWS;
    if (first >= p.rows) {
        return;
    }
    // g: the row within the token's [q heads | k heads | v heads] output; i its dimension.
    // The rotation's cos/sin is loaded before the product, so that its latency is not added
    // after the product's barriers (threads past the workgroup's rows load a valid entry).
    let row = first + l.li;
    let g = p.row_offset + row;
    let h = g / rp.hd;
    let i = g % rp.hd;
    let pos = rope_rows[0].x;
    let cpos = rope_rows[0].y + pos;
    let cs = cos_sin[pos * (rp.hd / 2u) + i / 2u];
    let total = matvec_rows_shared(first, l);
    if (l.li >= MV_ROWS || row >= p.rows) {
        return;
    }
    // Same arithmetic as rope.wgsl: pair (a0, a1) = (row i & ~1, row i | 1).
    let other = mv_pair[l.li ^ 1u];
    let even = (i & 1u) == 0u;
    let a0 = select(other, total, even);
    let a1 = select(total, other, even);
    let r0 = a0 * cs.x - a1 * cs.y;
    let r1 = a0 * cs.y + a1 * cs.x;
    if (h < rp.n_head) {
        y[g] = select(r1, r0, even);
        return;
    }
    // The caches hold f16 pairs, one word per pair: the pair's even row writes it.
    if (!even) {
        return;
    }
    if (h < rp.n_head + rp.n_kv) {
        kcache[(rp.cache_base + ((h - rp.n_head) * rp.ctx + cpos) * rp.hd + i) / 2u] = pack2x16float(vec2<f32>(r0, r1));
    } else {
        vcache[(rp.cache_base + ((h - rp.n_head - rp.n_kv) * rp.ctx + cpos) * rp.hd + i) / 2u] = pack2x16float(vec2<f32>(total, other));
    }
}

@compute @workgroup_size(MV_WG)
fn matvec_norm_glu(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    let first = (wid.x + wid.y * ROWS_PER_Y) * MV_ROWS;
    if (first >= p.rows) {
        return;
    }
    let total = matvec_rows_shared(first, l);
    let row = first + l.li;
    if (l.li >= MV_ROWS || row >= p.rows || (l.li & 1u) != 0u) {
        return;
    }
    // As silu_mul.wgsl: a / (1 + exp(-a)) * up.
    y[(p.row_offset + row) / 2u] = total / (1.0 + exp(-total)) * mv_pair[l.li + 1u];
}
