// Causal attention of each query token over the KV cache, with grouped-query heads.
// One workgroup per (group of query heads, token, chunk of positions). The query heads of a
// group share one K/V head (`Params.group` of them, at most MAXG; a K/V head with more query
// heads gets several groups): every K and V row is loaded once and used for each head of the
// group, so a step reads the cache once per group instead of once per query head.
// Positions are split into step.chunks chunks of step.chunk_len (flash-decoding), so that a
// single decoded token still spreads over many workgroups. A workgroup is SLICES slices of
// 64 threads; inside a chunk, positions are visited in rounds of SLICES tiles, one tile per
// slice, of T = 8 * G positions (`tile_groups`: G = 4 for head dimensions up to 64, 2 for
// 128, 1 for 256). Each tile's softmax weights update a running (max, sum, output) per
// thread and head as in flash attention, so no score buffer of context length is needed;
// the slices and thread groups are merged at the end in workgroup memory.
// A tile is one round of memory traffic: every thread issues all of its loads (8 V vectors
// and its share of the tile's K rows) before it uses any, because these kernels are bound by
// the latency of dependent loads, not by bytes.
// With one chunk the result is written to `out`; otherwise each chunk writes its (output,
// max, sum) per head to `part` and `combine` merges the chunks of each (head, token).
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    cache_base: u32,
    ctx: u32,        // positions per K/V head in the caches: every slot's
    scale: f32,
    window: u32,      // sliding-window layers: a token attends its last `window` positions; 0: all
    group: u32,       // query heads per workgroup (1..=MAXG), all of one K/V head
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    chunks: u32,      // chunks of positions per (head, token)
    chunk_len: u32,   // positions per chunk (a multiple of a round, see `attention_round` on the host)
}
// Head dimensions are multiples of 4 up to 256 (checked at load), so q, K and V rows, the
// output rows and the partial-result slots are whole vec4.
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
// Slices of WG threads in an `attention` workgroup (ATTENTION_SLICES on the host).
const SLICES: u32 = 4u;
// Query heads per `attention` workgroup, at most (ATTENTION_MAX_GROUP on the host).
const MAXG: u32 = 4u;
const NEG: f32 = -1.0e30;
// The score of a masked position: below NEG, the running maxima's start, so that its weight
// exp(MASKED - m) is 0 even where a thread has seen no position that counts.
const MASKED: f32 = -2.0e30;

// attention: the q rows of the group's heads (MAXG * hd / 4 <= 256 vec4); after the last
// tile, each thread's output of one head while the slices and groups are merged.
var<workgroup> qs: array<vec4<f32>, 256>;
// attention: per (slice, head, thread) partial scores; after the last tile, each thread's
// sum (first 256) and max (next 256) of one head.
var<workgroup> sc: array<f32, 1024>;
// attention: per (slice, head) the tile's scores (T <= 32 of them).
var<workgroup> ss: array<f32, 512>;
// combine: per-thread maxima, outputs and sums.
var<workgroup> cmax: array<f32, 64>;
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

// K[kb + i + j] for the eight j, zero where i + j >= hi (the loads clamped below hi).
fn k8(kb: u32, i: u32, hi: u32) -> array<vec4<f32>, 8> {
    let last = hi - 1u;
    let z = vec4<f32>(0.0);
    return array<vec4<f32>, 8>(
        krow(kb + i),
        select(z, krow(kb + min(i + 1u, last)), i + 1u < hi),
        select(z, krow(kb + min(i + 2u, last)), i + 2u < hi),
        select(z, krow(kb + min(i + 3u, last)), i + 3u < hi),
        select(z, krow(kb + min(i + 4u, last)), i + 4u < hi),
        select(z, krow(kb + min(i + 5u, last)), i + 5u < hi),
        select(z, krow(kb + min(i + 6u, last)), i + 6u < hi),
        select(z, krow(kb + min(i + 7u, last)), i + 7u < hi));
}

// sum_j qs[qo + i + j] * k[j] (k is zero where i + j >= hi, whose q index is clamped).
fn qk8(qo: u32, i: u32, hi: u32, k: array<vec4<f32>, 8>) -> vec4<f32> {
    let last = hi - 1u;
    return ((qs[qo + i] * k[0] + qs[qo + min(i + 1u, last)] * k[1])
        + (qs[qo + min(i + 2u, last)] * k[2] + qs[qo + min(i + 3u, last)] * k[3]))
        + ((qs[qo + min(i + 4u, last)] * k[4] + qs[qo + min(i + 5u, last)] * k[5])
        + (qs[qo + min(i + 6u, last)] * k[6] + qs[qo + min(i + 7u, last)] * k[7]));
}

@compute @workgroup_size(256)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wid.y;
    let c = wid.z;
    // Workgroup x takes heads h0..h0 + nr of K/V head kvh.
    let ratio = p.n_head / p.n_kv;
    let per_kv = (ratio + p.group - 1u) / p.group;
    let kvh = wid.x / per_kv;
    let first_of_kv = (wid.x % per_kv) * p.group;
    let h0 = kvh * ratio + first_of_kv;
    let nr = min(p.group, ratio - first_of_kv);
    let last = rows[t].x; // attends positions first..=last of its own slot
    var first = 0u;
    if (p.window != 0u && last + 1u > p.window) {
        first = last + 1u - p.window;
    }
    let hd4 = p.hd / 4u;
    let gs = tile_groups();
    let tile = 8u * gs;
    let slice = li / WG;
    let lt = li % WG;
    // The q rows of the group: token t's [q | k | v] row begins with its n_head q heads, so
    // the group's heads are nr * hd4 consecutive vec4.
    let qb = (t * (p.n_head + 2u * p.n_kv) + h0) * hd4;
    for (var i = li; i < nr * hd4; i += SLICES * WG) {
        qs[i] = q[qb + i];
    }
    workgroupBarrier();
    let cb = (p.cache_base + (kvh * p.ctx + rows[t].y) * p.hd) / 4u;
    // Scoring: thread lt of a slice takes position lt % T of the slice's tile and the
    // lt / T-th of `parts` parts of the head's vec4s (threads past parts * T idle).
    let parts = WG / tile;
    let part_len = (hd4 + parts - 1u) / parts;
    let kpos = lt % tile;
    let klo = min(lt / tile * part_len, hd4);
    let khi = min(klo + part_len, hd4);
    // Weighing: thread lt owns output vec4 d4 for the positions g, g + G, ... of the tile.
    let d4 = lt % hd4;
    let g = lt / hd4;
    let v_active = g < gs;
    let sg = select(0u, g, v_active);
    var m = array<f32, MAXG>(NEG, NEG, NEG, NEG);
    var l = array<f32, MAXG>(0.0, 0.0, 0.0, 0.0); // the sums of this thread's weights per head
    var acc = array<vec4<f32>, MAXG>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // Positions begin..=end of this chunk (none when the chunk starts past `last`). Tiles
    // wholly before `first` are skipped; positions before `first` or past `end` score MASKED.
    let begin = c * step.chunk_len;
    let end = min(begin + step.chunk_len - 1u, last);
    var start_tile = begin;
    if (first > begin) {
        start_tile = begin + (first - begin) / tile * tile;
    }
    for (var round = start_tile; round <= end && first <= end; round += SLICES * tile) {
        // This slice's tile (past `end`: all rows clamped to `end`, all scores masked).
        let base = round + slice * tile;
        // The 8 V rows this thread weighs (past `end`: row `end`, weight 0), loaded first.
        let vp = base + sg;
        let vb = cb + d4;
        let v0 = vrow(vb + min(vp, end) * hd4);
        let v1 = vrow(vb + min(vp + gs, end) * hd4);
        let v2 = vrow(vb + min(vp + 2u * gs, end) * hd4);
        let v3 = vrow(vb + min(vp + 3u * gs, end) * hd4);
        let v4 = vrow(vb + min(vp + 4u * gs, end) * hd4);
        let v5 = vrow(vb + min(vp + 5u * gs, end) * hd4);
        let v6 = vrow(vb + min(vp + 6u * gs, end) * hd4);
        let v7 = vrow(vb + min(vp + 7u * gs, end) * hd4);
        var d = array<vec4<f32>, MAXG>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        let kb = cb + min(base + kpos, end) * hd4;
        for (var i = klo; i < khi; i += 8u) {
            let k = k8(kb, i, khi);
            for (var r = 0u; r < MAXG; r++) {
                if (r < nr) {
                    d[r] += qk8(r * hd4, i, khi, k);
                }
            }
        }
        for (var r = 0u; r < MAXG; r++) {
            if (r < nr) {
                sc[(slice * MAXG + r) * WG + lt] = (d[r].x + d[r].y) + (d[r].z + d[r].w);
            }
        }
        workgroupBarrier();
        for (var i = lt; i < nr * tile; i += WG) {
            let r = i / tile;
            let pos = i % tile;
            let sb = (slice * MAXG + r) * WG + pos;
            var s = 0.0;
            for (var j = 0u; j < parts; j++) {
                s += sc[sb + j * tile];
            }
            let counts = base + pos <= end && base + pos >= first;
            ss[(slice * MAXG + r) * 32u + pos] = select(MASKED, s * p.scale, counts);
        }
        workgroupBarrier();
        for (var r = 0u; r < MAXG; r++) {
            if (r < nr) {
                let sr = (slice * MAXG + r) * 32u + sg;
                let s0 = ss[sr];
                let s1 = ss[sr + gs];
                let s2 = ss[sr + 2u * gs];
                let s3 = ss[sr + 3u * gs];
                let s4 = ss[sr + 4u * gs];
                let s5 = ss[sr + 5u * gs];
                let s6 = ss[sr + 6u * gs];
                let s7 = ss[sr + 7u * gs];
                let new_m = max(m[r], max(max(max(s0, s1), max(s2, s3)), max(max(s4, s5), max(s6, s7))));
                let corr = exp(m[r] - new_m);
                m[r] = new_m;
                let w0 = exp(s0 - new_m);
                let w1 = exp(s1 - new_m);
                let w2 = exp(s2 - new_m);
                let w3 = exp(s3 - new_m);
                let w4 = exp(s4 - new_m);
                let w5 = exp(s5 - new_m);
                let w6 = exp(s6 - new_m);
                let w7 = exp(s7 - new_m);
                l[r] = l[r] * corr + (((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7)));
                acc[r] = acc[r] * corr + (((w0 * v0 + w1 * v1) + (w2 * v2 + w3 * v3)) + ((w4 * v4 + w5 * v5) + (w6 * v6 + w7 * v7)));
            }
        }
    }
    workgroupBarrier();
    // Per head: merge the threads that share an output vec4 (G groups in each slice), each
    // rescaled to their largest max. A thread that saw no position that counts has max NEG
    // and sum 0, and weighs 0 unless all did (an empty chunk: max NEG, sum 0, which the
    // combine weighs by exp(NEG - max) = 0).
    for (var r = 0u; r < MAXG; r++) {
        if (r < nr) {
            qs[li] = select(vec4<f32>(0.0), acc[r], v_active);
            sc[li] = select(0.0, l[r], v_active);
            sc[SLICES * WG + li] = select(NEG, m[r], v_active);
            workgroupBarrier();
            if (li < hd4) {
                var mx = NEG;
                for (var s = 0u; s < SLICES; s++) {
                    for (var j = 0u; j < gs; j++) {
                        mx = max(mx, sc[SLICES * WG + s * WG + j * hd4 + li]);
                    }
                }
                var total = vec4<f32>(0.0);
                var sum = 0.0;
                for (var s = 0u; s < SLICES; s++) {
                    for (var j = 0u; j < gs; j++) {
                        let k = s * WG + j * hd4 + li;
                        let e = exp(sc[SLICES * WG + k] - mx);
                        total += qs[k] * e;
                        sum += sc[k] * e;
                    }
                }
                let h = h0 + r;
                if (step.chunks == 1u) {
                    out[(t * p.n_head + h) * hd4 + li] = total / sum;
                } else {
                    let sb = ((t * step.chunks + c) * p.n_head + h) * (hd4 + 1u);
                    part[sb + li] = total;
                    if (li == 0u) {
                        part[sb + hd4] = vec4<f32>(mx, sum, 0.0, 0.0);
                    }
                }
            }
            workgroupBarrier();
        }
    }
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

struct Merged {
    total: vec4<f32>,
    sum: f32,
}

// Merges the chunks of one (head, token): out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M),
// M the largest chunk max. One workgroup per (head, token). As in `attention`, the G groups
// of threads share the output vec4s and take every G-th chunk, eight chunks' loads at a
// time, so that step.chunks <= 8 * G (the host's limit, ATTENTION_MAX_CHUNKS) is one round
// of loads.
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
    cmax[li] = m;
    workgroupBarrier();
    var mx = NEG;
    for (var j = 0u; j < gs; j++) {
        mx = max(mx, cmax[j * hd4 + d4]);
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
