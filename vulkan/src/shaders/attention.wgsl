// Causal attention of each query token over the KV cache, with grouped-query heads.
// One workgroup per (query head, token, chunk of positions). Positions are split into
// step.chunks chunks of step.chunk_len (flash-decoding), so that a single decoded token
// still spreads over many workgroups. Inside a chunk, positions are visited in tiles of
// T = 8 * G positions (`tile_groups`: G = 4 for head dimensions up to 64, 2 for 128, 1 for
// 256), and each tile's softmax weights update a running (max, sum, output) as in flash
// attention, so no score buffer of context length is needed.
// A tile is one round of memory traffic: every thread issues all of its loads (8 V vectors,
// and its share of q and the tile's K rows) before it uses any, because these kernels are
// bound by the latency of dependent loads, not by bytes (a 512-position decode step reads
// 2 MB of K/V per layer).
// With one chunk the result is written to `out`; otherwise each chunk writes its (output,
// max, sum) to `part` and `combine` merges the chunks of each (head, token).
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    cache_base: u32,
    ctx: u32,        // positions per K/V head in the caches: every slot's
    scale: f32,
    window: u32,      // sliding-window layers: a token attends its last `window` positions; 0: all
    _pad1: u32,
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    chunks: u32,      // chunks of positions per (head, token)
    chunk_len: u32,   // positions per chunk (a multiple of the tile, see `tile_groups`)
}
// Head dimensions are multiples of 4 (checked at load), so q, K and V rows, the output rows
// and the partial-result slots are whole vec4.
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
// The caches hold f16 values, four to a vec2<u32> (pack2x16float), read as vec4<f32>.
@group(0) @binding(1) var<storage, read> kcache: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> vcache: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;
// Per (token, chunk, head) slot: hd output values (not yet divided by the sum), then one
// vec4 holding (max, sum, 0, 0).
@group(0) @binding(6) var<storage, read_write> part: array<vec4<f32>>;
// Per token of the step: its position in its sequence and the first cache position of the
// sequence's slot (see `Row` in rope.wgsl). Tokens of several sequences share a step.
@group(0) @binding(7) var<storage, read> rows: array<vec2<u32>>;

const WG: u32 = 64u;
const NEG: f32 = -1.0e30;
// Per-thread partial scores (attention) and per-thread maxima (combine).
var<workgroup> sc: array<f32, 64>;
// The tile's scores (T <= 32 of them).
var<workgroup> ss: array<f32, 32>;
// Per-thread partial outputs and sums, merged over the thread groups at the end.
var<workgroup> red: array<vec4<f32>, 64>;
var<workgroup> redl: array<f32, 64>;

// Threads that share one output vec4 of a head's row, each with other positions (or
// chunks): G = min(4, 64 / (hd / 4)). A tile has T = 8 * G positions, so that every thread
// of a group weighs exactly 8 V rows per tile.
fn tile_groups() -> u32 {
    return min(4u, WG / (p.hd / 4u));
}

// Four values of the K or V cache at vec4 index i.
fn krow(i: u32) -> vec4<f32> {
    let w = kcache[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn vrow(i: u32) -> vec4<f32> {
    let w = vcache[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// sum_j q[qb + i + j] * K[kb + i + j] for the (up to) eight j with i + j < hi.
fn qk8(qb: u32, kb: u32, i: u32, hi: u32) -> vec4<f32> {
    let last = hi - 1u;
    let i1 = min(i + 1u, last);
    let i2 = min(i + 2u, last);
    let i3 = min(i + 3u, last);
    let i4 = min(i + 4u, last);
    let i5 = min(i + 5u, last);
    let i6 = min(i + 6u, last);
    let i7 = min(i + 7u, last);
    // Clamped duplicates count zero.
    let keep = vec4<f32>(select(0.0, 1.0, i + 1u < hi), select(0.0, 1.0, i + 2u < hi), select(0.0, 1.0, i + 3u < hi), 0.0);
    let keep2 = vec4<f32>(select(0.0, 1.0, i + 4u < hi), select(0.0, 1.0, i + 5u < hi), select(0.0, 1.0, i + 6u < hi), select(0.0, 1.0, i + 7u < hi));
    return (q[qb + i] * krow(kb + i) + keep.x * q[qb + i1] * krow(kb + i1))
        + (keep.y * q[qb + i2] * krow(kb + i2) + keep.z * q[qb + i3] * krow(kb + i3))
        + ((keep2.x * q[qb + i4] * krow(kb + i4) + keep2.y * q[qb + i5] * krow(kb + i5))
        + (keep2.z * q[qb + i6] * krow(kb + i6) + keep2.w * q[qb + i7] * krow(kb + i7)));
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let c = wid.z;
    let kvh = h / (p.n_head / p.n_kv);
    let last = rows[t].x; // attends positions first..=last of its own slot
    var first = 0u;
    if (p.window != 0u && last + 1u > p.window) {
        first = last + 1u - p.window;
    }
    let hd4 = p.hd / 4u;
    let gs = tile_groups();
    let tile = 8u * gs;
    // q of token t is the first n_head heads of its [q | k | v] row.
    let qb = (t * (p.n_head + 2u * p.n_kv) + h) * hd4;
    let cb = (p.cache_base + (kvh * p.ctx + rows[t].y) * p.hd) / 4u;
    // Scoring: thread li takes position li % T of the tile and the li / T-th of `parts`
    // slices of the head's vec4s (threads past parts * T idle).
    let parts = WG / tile;
    let slice = (hd4 + parts - 1u) / parts;
    let kpos = li % tile;
    let kpart = li / tile;
    let klo = min(kpart * slice, hd4);
    let khi = min(klo + slice, hd4);
    // Weighing: thread li owns output vec4 d4 for the positions g, g + G, ... of the tile.
    let d4 = li % hd4;
    let g = li / hd4;
    let v_active = g < gs;
    var m = NEG;
    var l = 0.0; // the sum of this thread's group's weights
    var acc = vec4<f32>(0.0);
    // Positions begin..=end of this chunk (none when the chunk starts past `last`). Tiles
    // wholly before `first` are skipped, so every tile visited has a position that counts
    // (a tile of masked scores only would weigh them all 1 while the running max is NEG); a
    // chunk wholly before `first` is empty.
    let begin = c * step.chunk_len;
    let end = min(begin + step.chunk_len - 1u, last);
    var start_tile = begin;
    if (first > begin) {
        start_tile = begin + (first - begin) / tile * tile;
    }
    for (var base = start_tile; base <= end && first <= end; base += tile) {
        // The 8 V rows this thread weighs (past `end`: row `end`, weight 0), loaded first.
        let vp = base + select(0u, g, v_active);
        let vb = cb + d4;
        let v0 = vrow(vb + min(vp, end) * hd4);
        let v1 = vrow(vb + min(vp + gs, end) * hd4);
        let v2 = vrow(vb + min(vp + 2u * gs, end) * hd4);
        let v3 = vrow(vb + min(vp + 3u * gs, end) * hd4);
        let v4 = vrow(vb + min(vp + 4u * gs, end) * hd4);
        let v5 = vrow(vb + min(vp + 5u * gs, end) * hd4);
        let v6 = vrow(vb + min(vp + 6u * gs, end) * hd4);
        let v7 = vrow(vb + min(vp + 7u * gs, end) * hd4);
        var d = vec4<f32>(0.0);
        let kb = cb + min(base + kpos, end) * hd4;
        for (var i = klo; i < khi; i += 8u) {
            d += qk8(qb, kb, i, khi);
        }
        sc[li] = (d.x + d.y) + (d.z + d.w);
        workgroupBarrier();
        if (li < tile) {
            var s = 0.0;
            for (var j = 0u; j < parts; j++) {
                s += sc[j * tile + li];
            }
            ss[li] = select(NEG, s * p.scale, base + li <= end && base + li >= first);
        }
        workgroupBarrier();
        var tm = NEG;
        for (var j = 0u; j < tile; j += 8u) {
            tm = max(tm, max(max(max(ss[j], ss[j + 1u]), max(ss[j + 2u], ss[j + 3u])),
                             max(max(ss[j + 4u], ss[j + 5u]), max(ss[j + 6u], ss[j + 7u]))));
        }
        let new_m = max(m, tm);
        let corr = exp(m - new_m);
        m = new_m;
        // This thread's positions' weights (scores past `end` are NEG: weight 0).
        let sg = select(0u, g, v_active);
        let w0 = exp(ss[sg] - m);
        let w1 = exp(ss[sg + gs] - m);
        let w2 = exp(ss[sg + 2u * gs] - m);
        let w3 = exp(ss[sg + 3u * gs] - m);
        let w4 = exp(ss[sg + 4u * gs] - m);
        let w5 = exp(ss[sg + 5u * gs] - m);
        let w6 = exp(ss[sg + 6u * gs] - m);
        let w7 = exp(ss[sg + 7u * gs] - m);
        l = l * corr + (((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7)));
        acc = acc * corr + (((w0 * v0 + w1 * v1) + (w2 * v2 + w3 * v3)) + ((w4 * v4 + w5 * v5) + (w6 * v6 + w7 * v7)));
    }
    // Merge the groups: every group saw the same running max, so their outputs and sums add.
    red[li] = select(vec4<f32>(0.0), acc, v_active);
    redl[li] = select(0.0, l, v_active);
    workgroupBarrier();
    if (li >= hd4) {
        return;
    }
    let merged = merge_groups(li, hd4, gs);
    if (step.chunks == 1u) {
        out[(t * p.n_head + h) * hd4 + li] = merged.total / merged.sum;
        return;
    }
    // An empty chunk writes max NEG and sum 0, which the combine weighs by exp(NEG - max) = 0.
    let sb = ((t * step.chunks + c) * p.n_head + h) * (hd4 + 1u);
    part[sb + li] = merged.total;
    if (li == 0u) {
        part[sb + hd4] = vec4<f32>(m, merged.sum, 0.0, 0.0);
    }
}

struct Merged {
    total: vec4<f32>,
    sum: f32,
}

// Output vec4 `li` (< hd / 4) and the sum of weights, added over the thread groups from
// `red` and `redl` (written by every thread before a barrier).
fn merge_groups(li: u32, hd4: u32, gs: u32) -> Merged {
    var o = Merged(red[li], redl[li]);
    for (var j = 1u; j < gs; j++) {
        o.total += red[j * hd4 + li];
        o.sum += redl[j * hd4 + li];
    }
    return o;
}

// Merges the chunks of one (head, token): out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M),
// M the largest chunk max. One workgroup per (head, token). As in `attention`, the G groups
// of threads share the output vec4s and take every G-th chunk, eight chunks' loads at a
// time: up to 8 * G chunks are one round of loads (the host allows ATTENTION_MAX_CHUNKS).
@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let n = step.chunks;
    let hd4 = p.hd / 4u;
    let gs = tile_groups();
    let d4 = li % hd4;
    let g = li / hd4;
    let stride = p.n_head * (hd4 + 1u);
    let first = (t * n * p.n_head + h) * (hd4 + 1u);
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    if (g < gs) {
        for (var c0 = g; c0 < n; c0 += 8u * gs) {
            // Chunks past n read chunk n - 1 with weight 0 (max NEG).
            var cs = array<u32, 8>(c0, c0 + gs, c0 + 2u * gs, c0 + 3u * gs, c0 + 4u * gs, c0 + 5u * gs, c0 + 6u * gs, c0 + 7u * gs);
            let s0 = part[first + min(cs[0], n - 1u) * stride + hd4];
            let s1 = part[first + min(cs[1], n - 1u) * stride + hd4];
            let s2 = part[first + min(cs[2], n - 1u) * stride + hd4];
            let s3 = part[first + min(cs[3], n - 1u) * stride + hd4];
            let s4 = part[first + min(cs[4], n - 1u) * stride + hd4];
            let s5 = part[first + min(cs[5], n - 1u) * stride + hd4];
            let s6 = part[first + min(cs[6], n - 1u) * stride + hd4];
            let s7 = part[first + min(cs[7], n - 1u) * stride + hd4];
            let a0 = part[first + min(cs[0], n - 1u) * stride + d4];
            let a1 = part[first + min(cs[1], n - 1u) * stride + d4];
            let a2 = part[first + min(cs[2], n - 1u) * stride + d4];
            let a3 = part[first + min(cs[3], n - 1u) * stride + d4];
            let a4 = part[first + min(cs[4], n - 1u) * stride + d4];
            let a5 = part[first + min(cs[5], n - 1u) * stride + d4];
            let a6 = part[first + min(cs[6], n - 1u) * stride + d4];
            let a7 = part[first + min(cs[7], n - 1u) * stride + d4];
            let m0 = select(NEG, s0.x, cs[0] < n);
            let m1 = select(NEG, s1.x, cs[1] < n);
            let m2 = select(NEG, s2.x, cs[2] < n);
            let m3 = select(NEG, s3.x, cs[3] < n);
            let m4 = select(NEG, s4.x, cs[4] < n);
            let m5 = select(NEG, s5.x, cs[5] < n);
            let m6 = select(NEG, s6.x, cs[6] < n);
            let m7 = select(NEG, s7.x, cs[7] < n);
            let new_m = max(m, max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7))));
            let corr = exp(m - new_m);
            m = new_m;
            let e0 = exp(m0 - m);
            let e1 = exp(m1 - m);
            let e2 = exp(m2 - m);
            let e3 = exp(m3 - m);
            let e4 = exp(m4 - m);
            let e5 = exp(m5 - m);
            let e6 = exp(m6 - m);
            let e7 = exp(m7 - m);
            l = l * corr + (((e0 * s0.y + e1 * s1.y) + (e2 * s2.y + e3 * s3.y)) + ((e4 * s4.y + e5 * s5.y) + (e6 * s6.y + e7 * s7.y)));
            acc = acc * corr + (((e0 * a0 + e1 * a1) + (e2 * a2 + e3 * a3)) + ((e4 * a4 + e5 * a5) + (e6 * a6 + e7 * a7)));
        }
    }
    // Merge the groups, which saw different chunks: rescale each to the largest max.
    sc[li] = m;
    workgroupBarrier();
    var mx = NEG;
    for (var j = 0u; j < gs; j++) {
        mx = max(mx, sc[j * hd4 + d4]);
    }
    let wgt = select(0.0, exp(m - mx), g < gs);
    red[li] = acc * wgt;
    redl[li] = l * wgt;
    workgroupBarrier();
    if (li >= hd4) {
        return;
    }
    let merged = merge_groups(li, hd4, gs);
    out[(t * p.n_head + h) * hd4 + li] = merged.total / merged.sum;
}
