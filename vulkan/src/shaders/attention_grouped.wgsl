// Decode attention with the query heads of one K/V head together (grouped-query attention):
// one workgroup per (K/V head, token, chunk of positions), where `attention` has one per
// (query head, token, chunk). Appended to attention.wgsl, whose Params, Step, bindings,
// tiles (`tile_groups`), chunks, masking and partial-result layout it shares, so `combine`
// merges its chunks unchanged. The host prepends `const GROUP: u32 = <query heads per K/V
// head>;` (at most MAX_ATTENTION_GROUP in kernels.rs), so that the loops over the group
// unroll and its running outputs stay in registers.
// Why: the GROUP query heads of a K/V head read the same K and V rows. Here each thread loads
// its K slice and its 8 V rows of a tile once and scores and weighs them for every head of
// the group, instead of GROUP workgroups each loading them (the kernel is bound by the
// latency of its loads and their instructions, not by bytes).
// Per tile: (A) every thread loads its V rows and K slice and writes its partial score for
// each head; (B) the tile's scores per (head, position); (C) each head's new running max,
// the correction of its earlier sums and the tile's weights; (D) every thread weighs its V
// rows for each head.

// Per (head of the group, thread): the partial scores of step A.
var<workgroup> g_partial: array<f32, 64u * GROUP>;
// Per (head of the group, position of the tile): the scores (B), then the weights (C).
var<workgroup> g_scores: array<f32, 32u * GROUP>;
var<workgroup> g_weights: array<f32, 32u * GROUP>;
// Each head's running max, in two halves that alternate by tile: a tile reads one and
// writes the other, so no thread overwrites a max another thread of the tile still reads.
var<workgroup> g_max: array<f32, 2u * GROUP>;
// Each head's factor for its sums so far, exp(old max - new max), of the current tile.
var<workgroup> g_corr: array<f32, GROUP>;
// Per (head of the group, thread): the thread's output and sum, merged over the thread
// groups at the end.
var<workgroup> g_red: array<vec4<f32>, 64u * GROUP>;
var<workgroup> g_redl: array<f32, 64u * GROUP>;

// Four values of K at vec4 indices kb + i + j for j < 8; entries at or past `hi` are zero
// (their indices clamped to hi - 1), so a dot with them counts nothing.
fn k8(kb: u32, i: u32, hi: u32) -> array<vec4<f32>, 8> {
    let last = hi - 1u;
    let zero = vec4<f32>(0.0);
    return array<vec4<f32>, 8>(
        krow(kb + i),
        select(zero, krow(kb + min(i + 1u, last)), i + 1u < hi),
        select(zero, krow(kb + min(i + 2u, last)), i + 2u < hi),
        select(zero, krow(kb + min(i + 3u, last)), i + 3u < hi),
        select(zero, krow(kb + min(i + 4u, last)), i + 4u < hi),
        select(zero, krow(kb + min(i + 5u, last)), i + 5u < hi),
        select(zero, krow(kb + min(i + 6u, last)), i + 6u < hi),
        select(zero, krow(kb + min(i + 7u, last)), i + 7u < hi),
    );
}

// sum_j q[qb + i + j] * k[j] over the eight j (q's indices clamped below `hi`; k is zero there).
fn qdot8(qb: u32, i: u32, hi: u32, k: array<vec4<f32>, 8>) -> vec4<f32> {
    let last = hi - 1u;
    return ((q[qb + i] * k[0] + q[qb + min(i + 1u, last)] * k[1])
        + (q[qb + min(i + 2u, last)] * k[2] + q[qb + min(i + 3u, last)] * k[3]))
        + ((q[qb + min(i + 4u, last)] * k[4] + q[qb + min(i + 5u, last)] * k[5])
        + (q[qb + min(i + 6u, last)] * k[6] + q[qb + min(i + 7u, last)] * k[7]));
}

@compute @workgroup_size(64)
fn attention_grouped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let kvh = wid.x;
    let t = wid.y;
    let c = wid.z;
    let h0 = kvh * GROUP; // the group's first query head
    let last = rows[t].x; // attends positions first..=last of its own slot
    var first = 0u;
    if (p.window != 0u && last + 1u > p.window) {
        first = last + 1u - p.window;
    }
    let hd4 = p.hd / 4u;
    let gs = tile_groups();
    let tile = 8u * gs;
    // q of token t is the first n_head heads of its [q | k | v] row.
    let qrow = t * (p.n_head + 2u * p.n_kv) + h0;
    let cb = (p.cache_base + (kvh * p.ctx + rows[t].y) * p.hd) / 4u;
    // Scoring, as in `attention`: thread li takes position li % T of the tile and the
    // li / T-th of `parts` slices of the head's vec4s (threads past parts * T idle).
    let parts = WG / tile;
    let slice = (hd4 + parts - 1u) / parts;
    let kpos = li % tile;
    let kpart = li / tile;
    let klo = min(kpart * slice, hd4);
    let khi = min(klo + slice, hd4);
    // Weighing, as in `attention`: thread li owns output vec4 d4 of every head of the group
    // for the positions g, g + G, ... of the tile.
    let d4 = li % hd4;
    let g = li / hd4;
    let v_active = g < gs;
    let sg = select(0u, g, v_active);
    // Per head of the group: this thread's output and its group's sum of weights.
    var acc: array<vec4<f32>, GROUP>;
    var l: array<f32, GROUP>;
    if (li < GROUP) {
        g_max[li] = NEG;
    }
    var cur = 0u; // the half of g_max holding the running maxima
    // Chunk bounds and the skipped tiles before `first`: as in `attention`.
    let begin = c * step.chunk_len;
    let end = min(begin + step.chunk_len - 1u, last);
    var start_tile = begin;
    if (first > begin) {
        start_tile = begin + (first - begin) / tile * tile;
    }
    for (var base = start_tile; base <= end && first <= end; base += tile) {
        // (A) The 8 V rows this thread weighs (past `end`: row `end`, weight 0), then its
        // K slice, each loaded once for the whole group.
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
        let kb = cb + min(base + kpos, end) * hd4;
        var d: array<vec4<f32>, GROUP>;
        for (var i = klo; i < khi; i += 8u) {
            let k = k8(kb, i, khi);
            for (var r = 0u; r < GROUP; r++) {
                d[r] += qdot8((qrow + r) * hd4, i, khi, k);
            }
        }
        for (var r = 0u; r < GROUP; r++) {
            g_partial[r * WG + li] = (d[r].x + d[r].y) + (d[r].z + d[r].w);
        }
        workgroupBarrier();
        // (B) Score of (head r, position j) of the tile: the sum of its parts; NEG where
        // masked or past `end`.
        for (var e = li; e < GROUP * tile; e += WG) {
            let r = e / tile;
            let j = e % tile;
            var s = 0.0;
            for (var part_i = 0u; part_i < parts; part_i++) {
                s += g_partial[r * WG + part_i * tile + j];
            }
            g_scores[e] = select(NEG, s * p.scale, base + j <= end && base + j >= first);
        }
        workgroupBarrier();
        // (C) Every (head, position) takes its head's tile max (the same in each), its
        // weight, and position 0 records the head's new max and correction.
        for (var e = li; e < GROUP * tile; e += WG) {
            let r = e / tile;
            let hb = r * tile;
            var tm = NEG;
            for (var j = 0u; j < tile; j += 8u) {
                let s = hb + j;
                tm = max(tm, max(max(max(g_scores[s], g_scores[s + 1u]), max(g_scores[s + 2u], g_scores[s + 3u])),
                                 max(max(g_scores[s + 4u], g_scores[s + 5u]), max(g_scores[s + 6u], g_scores[s + 7u]))));
            }
            let old_m = g_max[cur * GROUP + r];
            let new_m = max(old_m, tm);
            g_weights[e] = exp(g_scores[e] - new_m);
            if (e == hb) {
                g_max[(1u - cur) * GROUP + r] = new_m;
                g_corr[r] = exp(old_m - new_m);
            }
        }
        workgroupBarrier();
        cur = 1u - cur;
        // (D) This thread's positions' weights for each head (past `end`: 0).
        for (var r = 0u; r < GROUP; r++) {
            let wb = r * tile + sg;
            let w0 = g_weights[wb];
            let w1 = g_weights[wb + gs];
            let w2 = g_weights[wb + 2u * gs];
            let w3 = g_weights[wb + 3u * gs];
            let w4 = g_weights[wb + 4u * gs];
            let w5 = g_weights[wb + 5u * gs];
            let w6 = g_weights[wb + 6u * gs];
            let w7 = g_weights[wb + 7u * gs];
            let corr = g_corr[r];
            l[r] = l[r] * corr + (((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7)));
            acc[r] = acc[r] * corr + (((w0 * v0 + w1 * v1) + (w2 * v2 + w3 * v3)) + ((w4 * v4 + w5 * v5) + (w6 * v6 + w7 * v7)));
        }
    }
    // Merge the thread groups of every head at once (they saw the same running max, so
    // their outputs and sums add) and write each head's output, or its chunk's partial
    // result as `attention` does.
    for (var r = 0u; r < GROUP; r++) {
        g_red[r * WG + li] = select(vec4<f32>(0.0), acc[r], v_active);
        g_redl[r * WG + li] = select(0.0, l[r], v_active);
    }
    workgroupBarrier();
    for (var o = li; o < GROUP * hd4; o += WG) {
        let r = o / hd4;
        let i = o % hd4;
        var total = g_red[r * WG + i];
        var sum = g_redl[r * WG + i];
        for (var j = 1u; j < gs; j++) {
            total += g_red[r * WG + j * hd4 + i];
            sum += g_redl[r * WG + j * hd4 + i];
        }
        let h = h0 + r;
        if (step.chunks == 1u) {
            out[(t * p.n_head + h) * hd4 + i] = total / sum;
        } else {
            // An empty chunk writes max NEG and sum 0 (see `attention`).
            let sb = ((t * step.chunks + c) * p.n_head + h) * (hd4 + 1u);
            part[sb + i] = total;
            if (i == 0u) {
                part[sb + hd4] = vec4<f32>(g_max[cur * GROUP + r], sum, 0.0, 0.0);
            }
        }
    }
}
