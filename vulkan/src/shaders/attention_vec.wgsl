// Decode attention with coalesced K loads (`dattn=1`): one workgroup per (block of GROUP
// consecutive query heads, token, chunk of positions). With GROUP = 1 it has the grid of
// `attention` (a workgroup per query head); with GROUP = query heads per K/V head, that of
// `attention_grouped` (a workgroup per K/V head, each K/V row loaded once for its heads).
// Appended to attention.wgsl, whose Params, Step, bindings, tiles (`tile_groups`), chunks,
// masking and partial-result layout it shares, so `combine` merges its chunks unchanged.
// The host prepends `const GROUP: u32 = <heads per workgroup>;` and `const VEC_WG: u32 =
// <threads per workgroup>;` (64 up to 1024; `dwg=`): with more threads a workgroup takes
// more positions per tile (G = min(VEC_WG / (hd / 4), VEC_WG / 16) thread groups, tiles of
// 8 G positions: with 64 threads those of `attention`), so that a few workgroups per K/V
// head (`gqa=1`) still keep a large GPU's SMs busy.
// Why: `attention` and `attention_grouped` score a tile with each thread reading a slice
// of one position's K row, so one load instruction of a subgroup touches as many K rows
// (cache lines) as it has threads; on an H100 at depth 4096 that made the loads of K, not
// the bytes, the cost of a tile. Here thread (d4, g) owns vec4 d4 of the head for the
// positions g, g + G, ..., g + 7G of a tile (T = 8G positions, as in `attention`), for K
// as for V: the threads of a subgroup read consecutive vec4s of one row. Each thread also
// reads q once (its vec4 of each head), not once per tile, and loads the next tile's K and
// V rows before the barriers of the current one, so a tile's loads wait on no barrier.
// A position's score is the sum of the hd / 4 threads' partial dots, through workgroup
// memory. Every thread keeps its own running max (over the positions it weighs; the same
// for all threads of its group g), so no tile-wide max is needed; the groups are merged,
// rescaled to their largest max, at the end.

// Per (head of the block, position j of the thread's 8, thread): partial dots, rows padded
// to 65 so that the threads summing one position each read another bank. Reused at the end
// for the merge (6 values per (head, thread): output vec4, sum, max).
const VEC_ROW: u32 = VEC_WG + 1u;
var<workgroup> v_part: array<f32, 8u * (VEC_WG + 1u) * GROUP>;
// Per (head of the block, position of the tile): the scores (NEG where masked).
var<workgroup> v_score: array<f32, VEC_WG / 2u * GROUP>;

// Four f16 values of a cache row, as vec4<f32>.
fn unpack4(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// Thread groups per tile (each weighs 8 of its positions): tiles of at most VEC_WG / 2
// positions, which v_score holds.
fn vec_groups() -> u32 {
    return min(VEC_WG / (p.hd / 4u), VEC_WG / 16u);
}

@compute @workgroup_size(VEC_WG)
fn attention_vec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h0 = wid.x * GROUP; // the block's first query head
    let t = wid.y;
    let c = wid.z;
    let kvh = h0 / (p.n_head / p.n_kv);
    let last = rows[t].x; // attends positions first..=last of its own slot
    var first = 0u;
    if (p.window != 0u && last + 1u > p.window) {
        first = last + 1u - p.window;
    }
    let hd4 = p.hd / 4u;
    let gs = vec_groups();
    let tile = 8u * gs;
    let cb = (p.cache_base + (kvh * p.ctx + rows[t].y) * p.hd) / 4u;
    // Thread li owns vec4 d4 of every head of the block for the positions g, g + G, ... of
    // each tile (threads past G * hd / 4 idle: they load and weigh position 0 and are
    // left out of the merge).
    let d4 = li % hd4;
    let g = li / hd4;
    let in_group = g < gs;
    let sg = select(0u, g, in_group);
    // q of token t is the first n_head heads of its [q | k | v] row: this thread's vec4 of
    // each head of the block.
    let qrow = t * (p.n_head + 2u * p.n_kv) + h0;
    var qv: array<vec4<f32>, GROUP>;
    for (var r = 0u; r < GROUP; r++) {
        qv[r] = q[(qrow + r) * hd4 + d4];
    }
    // Per head of the block: this thread's running max, sum of weights and output.
    var m: array<f32, GROUP>;
    var l: array<f32, GROUP>;
    var acc: array<vec4<f32>, GROUP>;
    for (var r = 0u; r < GROUP; r++) {
        m[r] = NEG;
    }
    // Chunk bounds and the skipped tiles before `first`: as in `attention`.
    let begin = c * step.chunk_len;
    let end = min(begin + step.chunk_len - 1u, last);
    var start_tile = begin;
    if (first > begin) {
        start_tile = begin + (first - begin) / tile * tile;
    }
    // This thread's K and V values of the tile being scored, and of the next one (loaded
    // ahead). Positions past `end` read row `end` (scored NEG, weighed 0).
    let col = cb + d4;
    var kc: array<vec2<u32>, 8>;
    var vc: array<vec2<u32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        let row = min(start_tile + sg + j * gs, end) * hd4;
        kc[j] = kcache[col + row];
        vc[j] = vcache[col + row];
    }
    for (var base = start_tile; base <= end && first <= end; base += tile) {
        // This thread's partial dots for its 8 positions and each head.
        var kf: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            kf[j] = unpack4(kc[j]);
        }
        for (var r = 0u; r < GROUP; r++) {
            for (var j = 0u; j < 8u; j++) {
                v_part[(r * 8u + j) * VEC_ROW + li] = dot(qv[r], kf[j]);
            }
        }
        // The next tile's rows, in flight during the barriers below.
        var kn: array<vec2<u32>, 8>;
        var vn: array<vec2<u32>, 8>;
        let next = base + tile;
        for (var j = 0u; j < 8u; j++) {
            let row = min(next + sg + j * gs, end) * hd4;
            kn[j] = kcache[col + row];
            vn[j] = vcache[col + row];
        }
        workgroupBarrier();
        // Score of (head r, position pos of the tile): the sum of the hd / 4 partial dots
        // of thread group pos % G, slot pos / G; NEG where masked or past `end`.
        for (var e = li; e < GROUP * tile; e += VEC_WG) {
            let r = e / tile;
            let pos = e % tile;
            let pb = (r * 8u + pos / gs) * VEC_ROW + (pos % gs) * hd4;
            // Four sums at a time, so that the adds do not wait on each other.
            var s4 = vec4<f32>(0.0);
            var i = 0u;
            for (; i + 4u <= hd4; i += 4u) {
                s4 += vec4<f32>(v_part[pb + i], v_part[pb + i + 1u], v_part[pb + i + 2u], v_part[pb + i + 3u]);
            }
            var s = (s4.x + s4.y) + (s4.z + s4.w);
            for (; i < hd4; i++) {
                s += v_part[pb + i];
            }
            v_score[e] = select(NEG, s * p.scale, base + pos <= end && base + pos >= first);
        }
        workgroupBarrier();
        var vf: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            vf[j] = unpack4(vc[j]);
        }
        // Weigh this thread's positions for each head (masked ones: weight 0).
        for (var r = 0u; r < GROUP; r++) {
            let sb = r * tile + sg;
            var s: array<f32, 8>;
            var tm = NEG;
            for (var j = 0u; j < 8u; j++) {
                s[j] = v_score[sb + j * gs];
                tm = max(tm, s[j]);
            }
            let new_m = max(m[r], tm);
            let corr = exp(m[r] - new_m);
            m[r] = new_m;
            var wsum = 0.0;
            var o = vec4<f32>(0.0);
            for (var j = 0u; j < 8u; j++) {
                let w = select(0.0, exp(s[j] - new_m), s[j] > NEG);
                wsum += w;
                o += w * vf[j];
            }
            l[r] = l[r] * corr + wsum;
            acc[r] = acc[r] * corr + o;
        }
        kc = kn;
        vc = vn;
    }
    // Merge the thread groups of each head: they saw different positions, so each is
    // rescaled to their largest max (idle threads: max NEG, sum 0, output 0). Every thread
    // passed the loop's last barrier, so v_part is free.
    for (var r = 0u; r < GROUP; r++) {
        let mb = r * 6u * VEC_WG + li;
        let a = select(vec4<f32>(0.0), acc[r], in_group);
        v_part[mb] = a.x;
        v_part[mb + VEC_WG] = a.y;
        v_part[mb + 2u * VEC_WG] = a.z;
        v_part[mb + 3u * VEC_WG] = a.w;
        v_part[mb + 4u * VEC_WG] = select(0.0, l[r], in_group);
        v_part[mb + 5u * VEC_WG] = select(NEG, m[r], in_group);
    }
    workgroupBarrier();
    for (var o = li; o < GROUP * hd4; o += VEC_WG) {
        let r = o / hd4;
        let i = o % hd4;
        let rb = r * 6u * VEC_WG + i;
        var mx = NEG;
        for (var j = 0u; j < gs; j++) {
            mx = max(mx, v_part[rb + 5u * VEC_WG + j * hd4]);
        }
        var total = vec4<f32>(0.0);
        var sum = 0.0;
        for (var j = 0u; j < gs; j++) {
            let b = rb + j * hd4;
            let f = exp(v_part[b + 5u * VEC_WG] - mx);
            total += f * vec4<f32>(v_part[b], v_part[b + VEC_WG], v_part[b + 2u * VEC_WG], v_part[b + 3u * VEC_WG]);
            sum += f * v_part[b + 4u * VEC_WG];
        }
        let h = h0 + r;
        if (step.chunks == 1u) {
            out[(t * p.n_head + h) * hd4 + i] = total / sum;
        } else {
            // An empty chunk writes max NEG and sum 0 (see `attention`).
            let sb = ((t * step.chunks + c) * p.n_head + h) * (hd4 + 1u);
            part[sb + i] = total;
            if (i == 0u) {
                part[sb + hd4] = vec4<f32>(mx, sum, 0.0, 0.0);
            }
        }
    }
}
