// Causal attention of the tokens of a prompt step on cooperative matrices (matrix cores):
// the same rows, tiles, masks and output as attention_tiled.wgsl (read its header), with
// S = Q K^T and O = P V done by 16x16x16 f16 -> f32 cooperative matrices. Built behind
// `enable f16; enable wgpu_cooperative_matrix;` where the prompt products run on them
// (`pattn=2`, see src/attention_coop.rs); `prefill=coop-emulated` builds it with the matrix
// operations in plain code (attention_coop_emulated.wgsl) for adapters without them.
//
// One workgroup (four subgroups of COOP_SG threads) per query tile of up to ROWS = 64 rows
// of one K/V head (`tiles[x]`, made by `attention_query_tiles` for 64 rows); subgroup s
// owns rows 16 s .. 16 s + 15. Its Q is converted to f16 and loaded once, through workgroup
// memory, into HD / 16 A matrices (`q<d>`) that stay in registers.
//
// Cooperative accumulators cannot be scaled row by row, so flash attention's rescaling of
// the output when a row's max grows is avoided by walking the positions twice:
// - pass 1, per tile of BK = 32 positions: S of the tile (two 16x16 accumulators per
//   subgroup) into workgroup memory, and each row's max of its unmasked scores;
// - pass 2, per tile: S again, P = exp(S scale - max) as f16 into workgroup memory (the
//   threads also sum each row's weights, as rounded to f16, so that the sum matches the P
//   that is multiplied), then O += P V on the HD / 16 accumulators of the subgroup's rows
//   (`o<d>`), never rescaled;
// - at the end O / sum is written where attention_tiled writes it.
// Q K^T is computed twice (1.5x the multiply-adds of one pass), all on the matrix cores.
//
// The host prepends HD (the head dimension, a multiple of 16 up to 256) and writes the
// lines marked with a dollar sign, one statement per matrix (WGSL has no arrays of
// cooperative matrices that stay in registers).
//
// Workgroup memory (`attention_coop_bytes` in src/attention_coop.rs): the K and V tiles in
// f16 (2 BK (HD + 8) halves; the Q of the tile is staged through them first), P in f16
// (ROWS (BK + 8) halves), S in f32 (ROWS BK), and per-row values: 31.5 KiB at HD 128. Staged
// rows are padded by 8 halves, so that cooperative loads see pointers and strides that are
// multiples of 16 bytes. Offsets into the f16 tiles are counted in vec4<f16>.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    cache_base: u32,
    ctx: u32,
    scale: f32,
    window: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
// The caches hold f16 values, four to a vec2<u32> (pack2x16float).
@group(0) @binding(1) var<storage, read> kcache: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> vcache: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(7) var<storage, read> rows: array<vec2<u32>>;
@group(0) @binding(8) var<storage, read> tiles: array<vec2<u32>>;

// The subgroup size the pipeline is built for (8, 16 or 32, fixed on the adapter).
override COOP_SG: u32 = 32u;
const ROWS: u32 = 64u;
const BK: u32 = 32u;
const NEG: f32 = -1.0e30;
const HD4: u32 = HD / 4u;
// vec4<f16>s per staged K/V (or Q) row and per P row.
const KSV: u32 = HD4 + 2u;
const PSV: u32 = (BK + 8u) / 4u;
// Where the V tile starts in `kv`.
const VB: u32 = BK * KSV;

// The K tile (positions 0..BK) then the V tile; before pass 1, the tile's 64 Q rows.
var<workgroup> kv: array<vec4<f16>, 2u * BK * KSV>;
// P, row r at r * PSV.
var<workgroup> pt: array<vec4<f16>, ROWS * PSV>;
// S: subgroup s's 16 rows by positions 16 j .. 16 j + 15 column-major at (2 s + j) 256
// (row i, position c at + 16 c + i); at the end, each subgroup's 16 x 16 block of O.
var<workgroup> st: array<f32, ROWS * BK>;
// Per row of the tile: the positions it attends (first > last for rows past the tile).
var<workgroup> row_first: array<u32, ROWS>;
var<workgroup> row_last: array<u32, ROWS>;
// Per row: its max score (after pass 1) and its sum of weights (after pass 2).
var<workgroup> row_max: array<f32, ROWS>;
var<workgroup> row_sum: array<f32, ROWS>;
// The threads' partial maxes or sums, combined per row (`combine_rows`).
var<workgroup> partial: array<f32, 128>;

// Threads; each walks the groups of 4 scores e = li + THREADS m (row e % ROWS, positions
// 4 (e / ROWS) ..), which are those of ROWS / THREADS rows where THREADS < ROWS (subgroups
// of 8), else of one row (`slot` 0).
override THREADS: u32 = 4u * COOP_SG;
override GROUPS: u32 = ROWS * BK / 4u / THREADS;
override SLOTS: u32 = max(1u, ROWS / THREADS);

fn unpack4(w: vec2<u32>) -> vec4<f16> {
    return vec4<f16>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)));
}

// The first position token t attends (its window's start).
fn first_position(t: u32) -> u32 {
    let last = rows[t].x;
    if (p.window != 0u && last + 1u > p.window) {
        return last + 1u - p.window;
    }
    return 0u;
}

// Stages the K rows (and, with `with_v`, the V rows) of positions base .. base + BK into
// `kv`; positions past `hi` repeat row `hi` (written, so finite), masked by every row.
fn stage_tile(li: u32, cb: u32, base: u32, hi: u32, with_v: bool) {
    for (var e = li; e < BK * HD4; e += THREADS) {
        let j = e / HD4;
        let d4 = e % HD4;
        let at = cb + min(base + j, hi) * HD4 + d4;
        kv[j * KSV + d4] = unpack4(kcache[at]);
        if (with_v) {
            kv[VB + j * KSV + d4] = unpack4(vcache[at]);
        }
    }
}

// The score of row r and position c of the tile in `st`.
fn score(r: u32, c: u32) -> f32 {
    return st[(2u * (r / 16u) + c / 16u) * 256u + 16u * (c % 16u) + r % 16u];
}

// Each row's max (`max_rows`) or sum of this thread's values `v` (SLOTS of them, see
// THREADS) into `dest`. Call from uniform control flow.
fn combine_rows(li: u32, v: array<f32, 2>, max_rows: bool) {
    workgroupBarrier();
    for (var s = 0u; s < SLOTS; s++) {
        partial[li + THREADS * s] = v[s];
    }
    workgroupBarrier();
    let holders = max(THREADS, ROWS) / ROWS;
    for (var r = li; r < ROWS; r += THREADS) {
        var acc = select(0.0, NEG, max_rows);
        for (var k = 0u; k < holders; k++) {
            let x = partial[r + ROWS * k];
            acc = select(acc + x, max(acc, x), max_rows);
        }
        if (max_rows) {
            row_max[r] = acc;
        } else {
            row_sum[r] = acc;
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(4u * COOP_SG)
fn attention_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
                  @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let kvh = wid.y;
    let tile = tiles[wid.x];
    if (tile.x >= tile.y) {
        return;
    }
    let group = p.n_head / p.n_kv;
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
    // The rows' positions, and their q in f16 (zero past the tile).
    for (var r = li; r < ROWS; r += THREADS) {
        let rr = tile.x + r;
        let t = min(rr, tile.y - 1u) / group;
        row_first[r] = select(1u, first_position(t), rr < tile.y);
        row_last[r] = select(0u, rows[t].x, rr < tile.y);
    }
    for (var e = li; e < ROWS * HD4; e += THREADS) {
        let r = e / HD4;
        let d4 = e % HD4;
        let rr = tile.x + r;
        let t = rr / group;
        let h = kvh * group + rr % group;
        var v = vec4<f16>();
        if (rr < tile.y) {
            v = vec4<f16>(q[(t * (p.n_head + 2u * p.n_kv) + h) * HD4 + d4]);
        }
        kv[r * KSV + d4] = v;
    }
    workgroupBarrier();
    // This subgroup's rows of Q at qa. Host-written: q<d> of dims 16 d .. 16 d + 15.
    let qa = sg * 16u * KSV;
    $Q_LOADS
    // The S tile of this subgroup's rows (its two 16 x 16 accumulators) goes to st at sa.
    let sa = sg * 512u;

    // Pass 1: each row's max score.
    var part = array<f32, 2>(NEG, NEG);
    for (var base = lo; base <= hi; base += BK) {
        // The previous tile's readers (and Q's loads) are done before it is overwritten.
        workgroupBarrier();
        stage_tile(li, cb, base, hi, false);
        workgroupBarrier();
        // Host-written: s0 and s1 = Q K^T of positions 0..16 and 16..32, stored at sa, sa + 256.
        $SCORES
        workgroupBarrier();
        for (var m = 0u; m < GROUPS; m++) {
            let e = li + THREADS * m;
            let r = e % ROWS;
            let c0 = 4u * (e / ROWS);
            for (var c = c0; c < c0 + 4u; c++) {
                let pos = base + c;
                if (pos >= row_first[r] && pos <= row_last[r]) {
                    part[r / THREADS] = max(part[r / THREADS], score(r, c) * p.scale);
                }
            }
        }
    }
    combine_rows(li, part, true);

    // Pass 2: P = exp(S scale - max) and O += P V.
    part = array<f32, 2>(0.0, 0.0);
    // Host-written: o<d> (zero), the output of dims 16 d .. 16 d + 15.
    $O_INIT
    let pa = sg * 16u * PSV;
    for (var base = lo; base <= hi; base += BK) {
        workgroupBarrier();
        stage_tile(li, cb, base, hi, true);
        workgroupBarrier();
        $SCORES
        workgroupBarrier();
        for (var m = 0u; m < GROUPS; m++) {
            let e = li + THREADS * m;
            let r = e % ROWS;
            let c0 = 4u * (e / ROWS);
            var w = vec4<f16>();
            for (var c = 0u; c < 4u; c++) {
                let pos = base + c0 + c;
                if (pos >= row_first[r] && pos <= row_last[r]) {
                    w[c] = f16(exp(score(r, c0 + c) * p.scale - row_max[r]));
                }
            }
            part[r / THREADS] += f32(w.x) + f32(w.y) + f32(w.z) + f32(w.w);
            pt[r * PSV + c0 / 4u] = w;
        }
        workgroupBarrier();
        // Host-written: p0, p1 (this subgroup's rows of P, positions 0..16 and 16..32) and
        // o<d> += p0 V[0..16, dims of d] + p1 V[16..32, dims of d].
        $PV
    }
    combine_rows(li, part, false);

    // O / sum: each o<d> goes through st (row-major here) to the threads of its subgroup,
    // which write the rows of the tile.
    let ob = sg * 256u;
    // Host-written: `write_out(o<d>, d)` below, inlined, for each d.
    $WRITES
}

// Writes this subgroup's 16 x 16 block of O at `st[ob..]` (row i, dim j at 16 i + j),
// divided by the rows' sums, to dims 16 d .. of its rows. Call from uniform control flow,
// after the block is stored.
fn write_block(sg: u32, lane: u32, tile: vec2<u32>, kvh: u32, d: u32) {
    let group = p.n_head / p.n_kv;
    for (var e = lane; e < 64u; e += COOP_SG) {
        let i = e / 4u;
        let r = sg * 16u + i;
        let rr = tile.x + r;
        if (rr < tile.y) {
            let t = rr / group;
            let h = kvh * group + rr % group;
            let b = sg * 256u + 16u * i + 4u * (e % 4u);
            let v = vec4<f32>(st[b], st[b + 1u], st[b + 2u], st[b + 3u]);
            out[(t * p.n_head + h) * HD4 + 4u * d + e % 4u] = v / row_sum[r];
        }
    }
}
