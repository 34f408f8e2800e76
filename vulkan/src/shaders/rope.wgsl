// Rotary position embedding for q and k, and the store of k and v into the KV cache.
// q, k and v of token t sit side by side in one buffer: [q heads | k heads | v heads].
// Thread i handles two consecutive pairs (2m, 2m + 1) of one head of one token. Heads
// 0..n_head are q (rotated in place), the next n_kv are k (rotated, written to the K cache),
// the last n_kv are v (copied to the V cache). Cos/sin come from a table computed on the host
// as ggml computes its angles (with the model's frequency factors). Pairs are (2j, 2j+1) for
// GGUF llama (ggml "normal" mode) or (j, j + hd/2) for NeoX mode.
// The caches hold f16 values, two to a word (pack2x16float): with two pairs per thread, each
// thread writes whole words in both modes (hd / 2 is even, as hd is a multiple of 4).
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    neox: u32,
    cache_base: u32,  // value offset of this layer in the caches (even)
    ctx: u32,         // positions per head in the cache (every slot's)
    _pad0: u32,
    _pad1: u32,
}
struct Step {
    n_tokens: u32,
    out_rows: u32,   // rows of the final hidden state the output head reads (one per sequence)
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> kcache: array<u32>;  // f16 pairs
@group(0) @binding(2) var<storage, read_write> vcache: array<u32>;  // f16 pairs
@group(0) @binding(3) var<storage, read> cos_sin: array<vec2<f32>>; // [ctx, hd/2]
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;
// Per token of the step: (its position in its sequence, the first cache position of the
// sequence's slot). The cos/sin table is indexed by the position; a K/V head's cache rows
// are the slots' positions one after another.
@group(0) @binding(6) var<storage, read> rows: array<vec2<u32>>;

// (a0, a1) rotated by the angle whose (cos, sin) is cs.
fn rotate(a0: f32, a1: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a0 * cs.x - a1 * cs.y, a0 * cs.y + a1 * cs.x);
}

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let quarter = p.hd / 4u;
    let heads = p.n_head + 2u * p.n_kv;
    let total = step.n_tokens * heads * quarter;
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < total; i += stride) {
        let m = i % quarter;
        let h = (i / quarter) % heads;
        let t = i / (quarter * heads);
        let pos = rows[t].x;
        let cpos = rows[t].y + pos;
        let b = (t * heads + h) * p.hd;
        // Pairs 2m and 2m + 1: values (4m, 4m+1) and (4m+2, 4m+3) in normal mode, (2m, 2m+half)
        // and (2m+1, 2m+1+half) in NeoX mode.
        var x0 = 4u * m;
        var x1 = 4u * m + 1u;
        var y0 = 4u * m + 2u;
        var y1 = 4u * m + 3u;
        if (p.neox != 0u) {
            x0 = 2u * m;
            x1 = 2u * m + half;
            y0 = 2u * m + 1u;
            y1 = 2u * m + 1u + half;
        }
        let csx = cos_sin[pos * half + 2u * m];
        let csy = cos_sin[pos * half + 2u * m + 1u];
        if (h < p.n_head) {
            let rx = rotate(qkv[b + x0], qkv[b + x1], csx);
            let ry = rotate(qkv[b + y0], qkv[b + y1], csy);
            qkv[b + x0] = rx.x;
            qkv[b + x1] = rx.y;
            qkv[b + y0] = ry.x;
            qkv[b + y1] = ry.y;
        } else if (h < p.n_head + p.n_kv) {
            let rx = rotate(qkv[b + x0], qkv[b + x1], csx);
            let ry = rotate(qkv[b + y0], qkv[b + y1], csy);
            let c = (p.cache_base + ((h - p.n_head) * p.ctx + cpos) * p.hd) / 2u;
            if (p.neox != 0u) {
                kcache[c + m] = pack2x16float(vec2<f32>(rx.x, ry.x));
                kcache[c + m + half / 2u] = pack2x16float(vec2<f32>(rx.y, ry.y));
            } else {
                kcache[c + 2u * m] = pack2x16float(rx);
                kcache[c + 2u * m + 1u] = pack2x16float(ry);
            }
        } else {
            let c = (p.cache_base + ((h - p.n_head - p.n_kv) * p.ctx + cpos) * p.hd) / 2u;
            vcache[c + 2u * m] = pack2x16float(vec2<f32>(qkv[b + 4u * m], qkv[b + 4u * m + 1u]));
            vcache[c + 2u * m + 1u] = pack2x16float(vec2<f32>(qkv[b + 4u * m + 2u], qkv[b + 4u * m + 3u]));
        }
    }
}
