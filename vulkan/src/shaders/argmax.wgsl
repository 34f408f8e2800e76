// Greedy token picking on the GPU: for each row of logits, the index of its largest value,
// one workgroup per row (a batched step's rows in one dispatch), so that a greedy sequence
// reads back one u32 instead of its row. The same rule as the host's `argmax`
// (runner/src/sampling.rs): ties go to the lowest index, NaN never wins, and a row with no
// value above -inf (all -inf or NaN) picks 0. NaN and -inf are told by their bits, so the
// result does not depend on how a driver compares them.
struct Params {
    n: u32, // values per row (the vocabulary)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> picks: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
// No candidate (yet): the value beside it means nothing.
const NONE: u32 = 0xffffffffu;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// Whether v may be picked at all: neither NaN nor -inf.
fn candidate(v: f32) -> bool {
    let bits = bitcast<u32>(v);
    return (bits & 0x7fffffffu) <= 0x7f800000u && bits != 0xff800000u;
}

// Whether the candidate (v, i) beats (bv, bi): larger, or as large and earlier.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

// A thread's scan: value v at index i replaces the best so far (bv, bi) if it is a candidate
// and larger (so of equals, the first seen stays).
fn consider(bv: ptr<function, f32>, bi: ptr<function, u32>, v: f32, i: u32) {
    if (candidate(v) && (*bi == NONE || v > *bv)) {
        *bv = v;
        *bi = i;
    }
}

@compute @workgroup_size(256)
fn argmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wid.x * p.n;
    // Each thread scans its strided share in increasing order, keeping the first of equals.
    // Eight of its values are loaded before any is compared, so that eight loads are in
    // flight at a time: one value per iteration waited for every load in turn (the driver
    // compilers seen do not unroll WGSL loops), 28 us for a row of 128256 on an H100, a
    // fiftieth of a 1B model's decode step. The comparisons keep the order.
    var bv = 0.0;
    var bi = NONE;
    var i = li;
    for (; i + 7u * WG < p.n; i += 8u * WG) {
        let v = array<f32, 8>(logits[base + i], logits[base + i + WG], logits[base + i + 2u * WG],
                              logits[base + i + 3u * WG], logits[base + i + 4u * WG],
                              logits[base + i + 5u * WG], logits[base + i + 6u * WG],
                              logits[base + i + 7u * WG]);
        // Written out, so that v stays in registers (an array indexed in a loop may not).
        consider(&bv, &bi, v[0], i);
        consider(&bv, &bi, v[1], i + WG);
        consider(&bv, &bi, v[2], i + 2u * WG);
        consider(&bv, &bi, v[3], i + 3u * WG);
        consider(&bv, &bi, v[4], i + 4u * WG);
        consider(&bv, &bi, v[5], i + 5u * WG);
        consider(&bv, &bi, v[6], i + 6u * WG);
        consider(&bv, &bi, v[7], i + 7u * WG);
    }
    for (; i < p.n; i += WG) {
        consider(&bv, &bi, logits[base + i], i);
    }
    best_v[li] = bv;
    best_i[li] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s && beats(best_v[li + s], best_i[li + s], best_v[li], best_i[li])) {
            best_v[li] = best_v[li + s];
            best_i[li] = best_i[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        picks[wid.x] = select(best_i[0], 0u, best_i[0] == NONE);
    }
}
