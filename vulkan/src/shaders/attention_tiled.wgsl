// Causal attention of the tokens of a prompt step (many tokens), with grouped-query heads:
// flash attention with query tiles, in plain FMA arithmetic.
//
// attention.wgsl is built for decode: one workgroup per (query head, token), so in a prompt
// step every query token re-reads its K/V rows on its own, and so does every query head that
// shares a K/V head. Here one workgroup takes up to 64 / tpr (below) consecutive query rows of
// one K/V head, a row being one (token, query head of that K/V head) pair, numbered
// token-major (row t * group + g is head kvh * group + g of token t): the rows `tiles[x]`
// names, for workgroup (x, K/V head). The rows share every K/V tile, staged in workgroup
// memory: a tile's K/V rows are read once per workgroup, not once per (token, head).
//
// Threads: `tpr` = threads per row, each holding DIMS of the row's output vec4s (and the
// same vec4s of its q) in registers, dims lane, lane + tpr, ...: tpr = 1, 2, 4, 8 for head
// dimensions up to 32, 64, 128, 256, so rows = 64 / tpr = 64, 32, 16, 8. Per tile of `bk`
// positions: every thread adds its dims' share of the tile's scores of its row into
// `partial`, then each thread sums its row's shares, and updates its row's running (max,
// sum, output) as in flash attention.
//
// A step may hold tokens of several sequences (chunked prefill of several prompts, or a
// prompt chunk beside decode tokens), each reading its own slot of the caches. The host
// splits the rows into tiles at sequence boundaries (`attention_query_tiles` in
// model/mod.rs), so that a workgroup's tokens share one slot and it walks their positions
// once. (Walking each sequence of a mixed tile in turn in the kernel would serialize the
// decode tokens beside a prompt chunk: up to 64 / tpr / group of them, each over its whole
// context, in one workgroup, where the decode kernel gives each its own workgroups.) A tile
// of a decode token has `group` rows; the tiles past the step's are empty and return.
//
// Every row attends at least its own position, so its sum of weights is positive. Scores of
// masked positions are NEG and weigh 0 (explicitly: a row that has seen no position yet has
// max NEG, and exp(NEG - NEG) would weigh them 1).
// The output goes where attention.wgsl writes it; no partial results, no combine.
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
// Head dimensions are multiples of 4 up to 256 (checked at load).
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
// The caches hold f16 values, four to a vec2<u32> (pack2x16float).
@group(0) @binding(1) var<storage, read> kcache: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> vcache: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: Params;
// Per token of the step: its position in its sequence and the first cache position of the
// sequence's slot (see `Row` in rope.wgsl).
@group(0) @binding(7) var<storage, read> rows: array<vec2<u32>>;
// Per workgroup x: its rows first..end (exclusive), of tokens of one slot; first == end:
// none.
@group(0) @binding(8) var<storage, read> tiles: array<vec2<u32>>;

const WG: u32 = 64u;
const NEG: f32 = -1.0e30;
// Output vec4s per thread (and q vec4s): head dimension / 4 / tpr, at most.
const DIMS: u32 = 8u;
// Most positions per tile; a tile holds TILE_WORDS vec4s of K (and of V): 16 positions up
// to head dimension 128, 8 at 256.
const MAX_POS: u32 = 16u;
const TILE_WORDS: u32 = 512u;

// The K and V tiles, f16 as in the caches: 4 KiB each. With `partial` 12 KiB of workgroup
// memory in all, within WebGPU's default 16 KiB.
var<workgroup> kt: array<vec2<u32>, TILE_WORDS>;
var<workgroup> vt: array<vec2<u32>, TILE_WORDS>;
// Per (tile position j, thread): the thread's share of its row's score, at j * WG + thread.
var<workgroup> partial: array<f32, 1024>; // WG * MAX_POS

// Threads per row: the fewest (a power of two) whose DIMS vec4s each cover the head.
// The host mirrors this (`attention_tiled_rows` in model/mod.rs).
fn threads_per_row(hd4: u32) -> u32 {
    return select(select(select(8u, 4u, hd4 <= 32u), 2u, hd4 <= 16u), 1u, hd4 <= 8u);
}

fn unpack4(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// The first position token t attends (its window's start).
fn first_position(t: u32) -> u32 {
    let last = rows[t].x;
    if (p.window != 0u && last + 1u > p.window) {
        return last + 1u - p.window;
    }
    return 0u;
}

@compute @workgroup_size(64)
fn attention_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let kvh = wid.y;
    let tile = tiles[wid.x];
    if (tile.x >= tile.y) {
        return;
    }
    let group = p.n_head / p.n_kv;
    let hd4 = p.hd / 4u;
    let tpr = threads_per_row(hd4);
    let bk = min(MAX_POS, TILE_WORDS / hd4);
    let lane = li % tpr;
    let row0 = li - lane; // the first thread of this thread's row
    // This thread's row, and its token and query head.
    let r = tile.x + li / tpr;
    let row_active = r < tile.y;
    let rr = min(r, tile.y - 1u);
    let t = rr / group;
    let h = kvh * group + rr % group;
    let last = rows[t].x;
    let first = first_position(t);
    // Its dims (past the head: the last vec4 again, with q 0, and not written).
    var dk: array<u32, DIMS>;
    var qv: array<vec4<f32>, DIMS>;
    var o: array<vec4<f32>, DIMS>;
    // q of token t is the first n_head heads of its [q | k | v] row.
    let qb = (t * (p.n_head + 2u * p.n_kv) + h) * hd4;
    for (var i = 0u; i < DIMS; i++) {
        let d4 = i * tpr + lane;
        dk[i] = min(d4, hd4 - 1u);
        qv[i] = select(vec4<f32>(0.0), q[qb + dk[i]], d4 < hd4);
        o[i] = vec4<f32>(0.0);
    }
    var m = NEG;
    var l = 0.0;
    // The workgroup's tokens (of one slot) and the positions they attend together.
    let t_lo = tile.x / group;
    let t_hi = (tile.y - 1u) / group;
    let slot = rows[t_lo].y;
    var lo = first_position(t_lo);
    var hi = rows[t_lo].x;
    for (var u = t_lo + 1u; u <= t_hi; u++) {
        lo = min(lo, first_position(u));
        hi = max(hi, rows[u].x);
    }
    let cb = (p.cache_base + (kvh * p.ctx + slot) * p.hd) / 4u;
    for (var base = lo; base <= hi; base += bk) {
        // The previous tile's readers are done before it is overwritten.
        workgroupBarrier();
        // Positions past `hi` repeat row `hi` (written, so finite), weighed 0.
        for (var e = li; e < bk * hd4; e += WG) {
            let at = cb + min(base + e / hd4, hi) * hd4 + e % hd4;
            kt[e] = kcache[at];
            vt[e] = vcache[at];
        }
        workgroupBarrier();
        for (var j = 0u; j < MAX_POS; j++) {
            if (j < bk) {
                var d = 0.0;
                for (var i = 0u; i < DIMS; i++) {
                    d += dot(qv[i], unpack4(kt[j * hd4 + dk[i]]));
                }
                partial[j * WG + li] = d;
            }
        }
        workgroupBarrier();
        // The row's scores (NEG where masked) and their max.
        var s: array<f32, MAX_POS>;
        var tm = NEG;
        for (var j = 0u; j < MAX_POS; j++) {
            var sum = 0.0;
            if (j < bk) {
                for (var k = 0u; k < tpr; k++) {
                    sum += partial[j * WG + row0 + k];
                }
            }
            let pos = base + j;
            let valid = row_active && j < bk && pos >= first && pos <= last;
            s[j] = select(NEG, sum * p.scale, valid);
            tm = max(tm, s[j]);
        }
        let new_m = max(m, tm);
        let corr = exp(m - new_m);
        m = new_m;
        l *= corr;
        for (var i = 0u; i < DIMS; i++) {
            o[i] *= corr;
        }
        for (var j = 0u; j < MAX_POS; j++) {
            if (j < bk) {
                let w = select(0.0, exp(s[j] - m), s[j] != NEG);
                l += w;
                for (var i = 0u; i < DIMS; i++) {
                    o[i] += w * unpack4(vt[j * hd4 + dk[i]]);
                }
            }
        }
    }
    if (!row_active) {
        return;
    }
    let ob = (t * p.n_head + h) * hd4;
    for (var i = 0u; i < DIMS; i++) {
        let d4 = i * tpr + lane;
        if (d4 < hd4) {
            out[ob + d4] = o[i] / l;
        }
    }
}
