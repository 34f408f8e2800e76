// Dequantizing matrix products: y[t, row] (+)= sum_k W[row, k] * x[t, k].
// W stays in its GGUF block format (see quant.rs for the per-type layout) and is dequantized
// here, 32 weights ("one unit") at a time, by the type-specific `load_unit` appended below.
// The hot loops are written out by hand: the driver compilers seen so far do not unroll
// the loops WGSL becomes, and a loop of dependent loads leaves the memory system idle.
// One workgroup computes one row for up to TB tokens, so the row's bytes are read once per
// TB tokens: TB = 1 token is the decode matrix-vector product, more is the prefill product.

struct Params {
    rows: u32,        // rows of W in this chunk
    row_offset: u32,  // global index of the chunk's first row
    k: u32,           // elements per row (multiple of 32)
    out_stride: u32,  // floats per token in y
    aux: u32,         // type-specific: word offset of the scales section
    accumulate: u32,  // 1: add into y (fused residual add), 0: overwrite
    last_only: u32,   // 1: x holds one token (the last one); compute one column
    out_offset: u32,  // float offset of this weight's first row within a token of y
    lanes: u32,       // threads per row (8, 16, 32 or 64)
    eps: f32,         // matvec_norm: the RMSNorm epsilon
    _pad1: u32,
    _pad2: u32,
}
struct Step {
    n_tokens: u32,
    start: u32,
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
// are 16-byte aligned (F32, F16, Q8_0, Q4_0, Q4_K).
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
    let n = select(step.n_tokens, 1u, p.last_only != 0u);
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
// A workgroup computes MV_ROWS = 4 * ROW_GROUPS consecutive rows. Every thread walks the
// rows' 32-weight units with a stride of WG: it loads the unit's 32 x values once and uses
// them for every row (four rows' loads in flight at a time), and the per-thread sums are
// reduced with `reduce_rows` (subgroup operations where the adapter has them). Every
// workgroup reads all of x (and for matvec_norm the norm weights and x again), so tall
// matrices use ROW_GROUPS = 4: x traffic from L2 per weight byte drops fourfold (measured
// on the H200: with 4 rows per workgroup the FFN and output products took the same time
// for Q4_0 as for Q8_0, bound by x reads). Three
// entry points differ only in how x is read, so that the decode step needs no separate
// RMSNorm or SiLU dispatch:
//   matvec       x as is;
//   matvec_norm  RMSNorm(x) * norm_w, with the sum of squares computed by every workgroup;
//   matvec_glu   silu(gate) * up, x holding [gate (k values) | up (k values)].

// Groups of four rows per workgroup, 1, 2 or 4 (a pipeline constant).
override ROW_GROUPS: u32 = 1u;
// 32-weight units of a row each thread takes per loop iteration, 1 or 2 (a pipeline constant).
override MV_UNITS: u32 = 1u;
override MV_ROWS: u32 = 4u * ROW_GROUPS;
var<private> mv_acc: array<f32, 16>;

// Four x values (one vec4) at vec4 index i, transformed as the entry point says.
fn x_at(mode: u32, i: u32, scale: f32) -> vec4<f32> {
    let v = x[i];
    if (mode == 1u) {
        return v * scale * norm_w[i];
    }
    if (mode == 2u) {
        // As silu_mul.wgsl: a / (1 + exp(-a)) * up.
        return v / (1.0 + exp(-v)) * x[p.k / 4u + i];
    }
    return v;
}

// The 32 x values of unit u, transformed as the entry point says.
fn x_unit(mode: u32, u: u32, scale: f32) -> array<vec4<f32>, 8> {
    let b = u * 8u;
    return array<vec4<f32>, 8>(x_at(mode, b, scale), x_at(mode, b + 1u, scale), x_at(mode, b + 2u, scale),
                               x_at(mode, b + 3u, scale), x_at(mode, b + 4u, scale), x_at(mode, b + 5u, scale),
                               x_at(mode, b + 6u, scale), x_at(mode, b + 7u, scale));
}

fn dot8(a: array<vec4<f32>, 8>, b: array<vec4<f32>, 8>) -> f32 {
    return dot(a[0], b[0]) + dot(a[1], b[1]) + dot(a[2], b[2]) + dot(a[3], b[3])
        + dot(a[4], b[4]) + dot(a[5], b[5]) + dot(a[6], b[6]) + dot(a[7], b[7]);
}

// Four consecutive rows' dot products with one unit of x (rows past `last` read row `last`).
// xsum is the sum of xs (for types with an offset, see unit_dot in q4_0.wgsl).
fn group4(f: u32, last: u32, u: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> vec4<f32> {
    return vec4<f32>(unit_dot(min(f, last), u, xs, xsum), unit_dot(min(f + 1u, last), u, xs, xsum),
                     unit_dot(min(f + 2u, last), u, xs, xsum), unit_dot(min(f + 3u, last), u, xs, xsum));
}

fn sum8(xs: array<vec4<f32>, 8>) -> f32 {
    return dot(xs[0] + xs[1] + xs[2] + xs[3] + xs[4] + xs[5] + xs[6] + xs[7], vec4<f32>(1.0));
}

fn matvec_body(wid: vec3<u32>, l: Lanes, mode: u32) {
    let first = (wid.x + wid.y * ROWS_PER_Y) * MV_ROWS;
    if (first >= p.rows) {
        return;
    }
    var scale = 1.0;
    if (mode == 1u) {
        var ss = 0.0;
        for (var i = l.li; i < p.k / 4u; i += WG) {
            let v = x[i];
            ss += dot(v, v);
        }
        scale = 1.0 / sqrt(reduce_all(ss, l) / f32(p.k) + p.eps);
    }
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
    // Pairs of units while both are in the row (MV_UNITS = 2), then single units.
    var u = l.li;
    if (MV_UNITS > 1u) {
        for (; u + WG < units; u += 2u * WG) {
            let xa = x_unit(mode, u, scale);
            let xb = x_unit(mode, u + WG, scale);
            let sa = sum8(xa);
            let sb = sum8(xb);
            g0 += group4(first, last, u, xa, sa) + group4(first, last, u + WG, xb, sb);
            if (ROW_GROUPS > 1u) {
                g1 += group4(first + 4u, last, u, xa, sa) + group4(first + 4u, last, u + WG, xb, sb);
            }
            if (ROW_GROUPS > 2u) {
                g2 += group4(first + 8u, last, u, xa, sa) + group4(first + 8u, last, u + WG, xb, sb);
                g3 += group4(first + 12u, last, u, xa, sa) + group4(first + 12u, last, u + WG, xb, sb);
            }
        }
    }
    for (; u < units; u += WG) {
        let xs = x_unit(mode, u, scale);
        let xsum = sum8(xs);
        g0 += group4(first, last, u, xs, xsum);
        if (ROW_GROUPS > 1u) {
            g1 += group4(first + 4u, last, u, xs, xsum);
        }
        if (ROW_GROUPS > 2u) {
            g2 += group4(first + 8u, last, u, xs, xsum);
            g3 += group4(first + 12u, last, u, xs, xsum);
        }
    }
    mv_acc[0] = g0.x; mv_acc[1] = g0.y; mv_acc[2] = g0.z; mv_acc[3] = g0.w;
    mv_acc[4] = g1.x; mv_acc[5] = g1.y; mv_acc[6] = g1.z; mv_acc[7] = g1.w;
    mv_acc[8] = g2.x; mv_acc[9] = g2.y; mv_acc[10] = g2.z; mv_acc[11] = g2.w;
    mv_acc[12] = g3.x; mv_acc[13] = g3.y; mv_acc[14] = g3.z; mv_acc[15] = g3.w;
    let total = reduce_rows(l);
    let row = first + l.li;
    if (l.li < MV_ROWS && row < p.rows) {
        let o = p.out_offset + p.row_offset + row;
        if (p.accumulate != 0u) {
            y[o] += total;
        } else {
            y[o] = total;
        }
    }
}

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    matvec_body(wid, l, 0u);
}

@compute @workgroup_size(64)
fn matvec_norm(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    matvec_body(wid, l, 1u);
}

@compute @workgroup_size(64)
fn matvec_glu(@builtin(workgroup_id) wid: vec3<u32>, l: Lanes) {
    matvec_body(wid, l, 2u);
}
