// Causal attention of each query token over the KV cache, with grouped-query heads.
// One workgroup per (query head, token, chunk of positions). Positions are split into
// step.chunks chunks of step.chunk_len (flash-decoding), so that a single decoded token
// still spreads over many workgroups. Inside a chunk, positions are visited in tiles of 64:
// each thread scores one position, then the tile's softmax weights update a running (max,
// sum, output) as in flash attention, so no score buffer of context length is needed.
// With one chunk the result is written to `out`; otherwise each chunk writes its (output,
// max, sum) to `part` and `combine` merges the chunks of each (head, token).
// The loops over positions and dimensions are written out in groups of four or eight
// independent loads: the driver compilers do not unroll WGSL's loops by themselves, and one
// dependent load per iteration leaves the memory system idle.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    cache_base: u32,
    ctx: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}
struct Step {
    n_tokens: u32,
    start: u32,
    chunks: u32,      // chunks of positions per (head, token)
    chunk_len: u32,   // positions per chunk
}
@group(0) @binding(0) var<storage, read> q: array<f32>;
// Head dimensions are multiples of 4 (checked at load), so rows of K are whole vec4.
@group(0) @binding(1) var<storage, read> kcache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> vcache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;
// Per (token, chunk, head) slot: hd output values (not yet divided by the sum), max, sum.
@group(0) @binding(6) var<storage, read_write> part: array<f32>;

const WG: u32 = 64u;
const MAX_HD: u32 = 256u;
const NEG: f32 = -1.0e30;
var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> pr: array<f32, 64>;
// combine: each chunk's weight e^(m_c - M) and sum.
var<workgroup> cw: array<f32, 64>;
var<workgroup> cl: array<f32, 64>;

// The largest (take_max) or the sum of the 64 values of pr, eight independent reads at a time.
fn over_pr(take_max: bool) -> f32 {
    var r = select(0.0, NEG, take_max);
    for (var j = 0u; j < WG; j += 8u) {
        if (take_max) {
            r = max(r, max(max(max(pr[j], pr[j + 1u]), max(pr[j + 2u], pr[j + 3u])),
                           max(max(pr[j + 4u], pr[j + 5u]), max(pr[j + 6u], pr[j + 7u]))));
        } else {
            r += ((pr[j] + pr[j + 1u]) + (pr[j + 2u] + pr[j + 3u])) + ((pr[j + 4u] + pr[j + 5u]) + (pr[j + 6u] + pr[j + 7u]));
        }
    }
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let c = wid.z;
    let kvh = h / (p.n_head / p.n_kv);
    let last = step.start + t; // attends positions 0..=last
    let hd4 = p.hd / 4u;
    // q of token t is the first n_head heads of its [q | k | v] row.
    let qb = (t * (p.n_head + 2u * p.n_kv) + h) * p.hd;
    if (lid.x < hd4) {
        let i = qb + 4u * lid.x;
        qs[lid.x] = vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]) * p.scale;
    }
    workgroupBarrier();
    let cb = p.cache_base + kvh * p.ctx * p.hd;
    var m = NEG;
    var l = 0.0;
    var acc0 = 0.0; // dims lid, lid+64, lid+128, lid+192
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    // Positions begin..=end of this chunk (none when the chunk starts past `last`).
    let begin = c * step.chunk_len;
    let end = min(begin + step.chunk_len - 1u, last);
    for (var base = begin; base <= end; base += WG) {
        let pos = base + lid.x;
        var s = NEG;
        if (pos <= end) {
            let kb = (cb + pos * p.hd) / 4u;
            var d = vec4<f32>(0.0);
            var i = 0u;
            for (; i + 8u <= hd4; i += 8u) {
                d += ((qs[i] * kcache[kb + i] + qs[i + 1u] * kcache[kb + i + 1u])
                    + (qs[i + 2u] * kcache[kb + i + 2u] + qs[i + 3u] * kcache[kb + i + 3u]))
                    + ((qs[i + 4u] * kcache[kb + i + 4u] + qs[i + 5u] * kcache[kb + i + 5u])
                    + (qs[i + 6u] * kcache[kb + i + 6u] + qs[i + 7u] * kcache[kb + i + 7u]));
            }
            for (; i < hd4; i++) {
                d += qs[i] * kcache[kb + i];
            }
            s = d.x + d.y + d.z + d.w;
        }
        pr[lid.x] = s;
        workgroupBarrier();
        let new_m = max(m, over_pr(true));
        let corr = exp(m - new_m);
        workgroupBarrier();
        pr[lid.x] = select(0.0, exp(s - new_m), pos <= end);
        workgroupBarrier();
        l = l * corr + over_pr(false);
        m = new_m;
        // Weighted sum of V rows: thread lid owns dims lid + 64 i. Positions past `end`
        // have weight 0 and read a valid row instead; eight rows' loads go out together.
        acc0 *= corr;
        acc1 *= corr;
        acc2 *= corr;
        acc3 *= corr;
        // Only the tile's positions up to `end` (rounded up to 8) carry weight.
        let n_pos = min(WG, end + 1u - base);
        for (var j = 0u; j < n_pos; j += 8u) {
            let b = cb + lid.x;
            let rows = array<u32, 8>(
                b + min(base + j, end) * p.hd, b + min(base + j + 1u, end) * p.hd,
                b + min(base + j + 2u, end) * p.hd, b + min(base + j + 3u, end) * p.hd,
                b + min(base + j + 4u, end) * p.hd, b + min(base + j + 5u, end) * p.hd,
                b + min(base + j + 6u, end) * p.hd, b + min(base + j + 7u, end) * p.hd);
            let wts = array<f32, 8>(pr[j], pr[j + 1u], pr[j + 2u], pr[j + 3u], pr[j + 4u], pr[j + 5u], pr[j + 6u], pr[j + 7u]);
            acc0 += v8(rows, wts, 0u);
            if (lid.x + 64u < p.hd) {
                acc1 += v8(rows, wts, 64u);
            }
            if (lid.x + 128u < p.hd) {
                acc2 += v8(rows, wts, 128u);
            }
            if (lid.x + 192u < p.hd) {
                acc3 += v8(rows, wts, 192u);
            }
        }
        workgroupBarrier();
    }
    let acc = array<f32, 4>(acc0, acc1, acc2, acc3);
    if (step.chunks == 1u) {
        let ob = (t * p.n_head + h) * p.hd;
        for (var i = 0u; i < 4u; i++) {
            let dim = lid.x + i * WG;
            if (dim < p.hd) {
                out[ob + dim] = acc[i] / l;
            }
        }
        return;
    }
    // An empty chunk writes max NEG and sum 0, which the combine weighs by exp(NEG - max) = 0.
    let sb = ((t * step.chunks + c) * p.n_head + h) * (p.hd + 2u);
    for (var i = 0u; i < 4u; i++) {
        let dim = lid.x + i * WG;
        if (dim < p.hd) {
            part[sb + dim] = acc[i];
        }
    }
    if (lid.x == 0u) {
        part[sb + p.hd] = m;
        part[sb + p.hd + 1u] = l;
    }
}

// sum_k wts[k] * V[rows[k] + off]: eight independent loads.
fn v8(rows: array<u32, 8>, wts: array<f32, 8>, off: u32) -> f32 {
    return ((wts[0] * vcache[rows[0] + off] + wts[1] * vcache[rows[1] + off])
        + (wts[2] * vcache[rows[2] + off] + wts[3] * vcache[rows[3] + off]))
        + ((wts[4] * vcache[rows[4] + off] + wts[5] * vcache[rows[5] + off])
        + (wts[6] * vcache[rows[6] + off] + wts[7] * vcache[rows[7] + off]));
}

// Merges the chunks of one (head, token): out = sum_c acc_c e^(m_c - M) / sum_c l_c e^(m_c - M),
// M the largest chunk max. One workgroup per (head, token), one thread per output dimension;
// step.chunks is at most 64 (the host caps it lower).
@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let n = step.chunks;
    let stride = p.n_head * (p.hd + 2u);
    let first = (t * n * p.n_head + h) * (p.hd + 2u);
    // Thread c reads chunk c's max and sum.
    if (lid.x < n) {
        pr[lid.x] = part[first + lid.x * stride + p.hd];
        cl[lid.x] = part[first + lid.x * stride + p.hd + 1u];
    } else {
        pr[lid.x] = NEG;
        cl[lid.x] = 0.0;
    }
    workgroupBarrier();
    let mx = over_pr(true);
    cw[lid.x] = select(0.0, exp(pr[lid.x] - mx), lid.x < n);
    workgroupBarrier();
    var total = 0.0;
    for (var c = 0u; c < n; c++) {
        total += cl[c] * cw[c];
    }
    let ob = (t * p.n_head + h) * p.hd;
    for (var dim = lid.x; dim < p.hd; dim += WG) {
        // Four chunks' loads at a time; chunks past n read chunk n - 1 with weight 0.
        var a = 0.0;
        for (var c = 0u; c < n; c += 4u) {
            let c1 = min(c + 1u, n - 1u);
            let c2 = min(c + 2u, n - 1u);
            let c3 = min(c + 3u, n - 1u);
            a += part[first + c * stride + dim] * cw[c]
                + part[first + c1 * stride + dim] * select(0.0, cw[c1], c + 1u < n)
                + part[first + c2 * stride + dim] * select(0.0, cw[c2], c + 2u < n)
                + part[first + c3 * stride + dim] * select(0.0, cw[c3], c + 3u < n);
        }
        out[ob + dim] = a / total;
    }
}
