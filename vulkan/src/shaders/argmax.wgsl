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

@compute @workgroup_size(256)
fn argmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wid.x * p.n;
    // Each thread scans its strided share in increasing order, keeping the first of equals.
    var bv = 0.0;
    var bi = NONE;
    for (var i = li; i < p.n; i += WG) {
        let v = logits[base + i];
        if (candidate(v) && (bi == NONE || v > bv)) {
            bv = v;
            bi = i;
        }
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
