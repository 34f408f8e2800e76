// Dequantizing matrix products: y[t, row] (+)= sum_k W[row, k] * x[t, k].
// W stays in its GGUF block format (see quant.rs for the per-type layout) and is dequantized
// here, 32 weights ("one unit") at a time, by the type-specific `load_unit` appended below.
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
    _pad0: u32,
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

const WG: u32 = 64u;
const TB: u32 = 8u;
// Workgroups along x before wrapping to y: dispatch dimensions are limited to 65535.
const ROWS_PER_Y: u32 = 32768u;

var<private> wv: array<vec4<f32>, 8>;
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
        load_unit(row, u);
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
        load_unit(row, u);
        let base = t * p.k + u * 32u;
        for (var j = 0u; j < 8u; j++) {
            y[base + j * 4u] = wv[j].x;
            y[base + j * 4u + 1u] = wv[j].y;
            y[base + j * 4u + 2u] = wv[j].z;
            y[base + j * 4u + 3u] = wv[j].w;
        }
    }
}
