// Rotary position embedding for q and k, and the store of k and v into the KV cache.
// q, k and v of token t sit side by side in one buffer: [q heads | k heads | v heads].
// Thread i handles one pair of one head of one token. Heads 0..n_head are q (rotated in
// place), the next n_kv are k (rotated, written to the K cache), the last n_kv are v (copied
// to the V cache). Cos/sin come from a table computed on the host exactly as candle does.
// Pairs are (2j, 2j+1) for GGUF llama (ggml "normal" mode) or (j, j + hd/2) for NeoX mode.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    neox: u32,
    cache_base: u32,  // float offset of this layer in the caches
    ctx: u32,         // positions per head in the cache
    _pad0: u32,
    _pad1: u32,
}
struct Step {
    n_tokens: u32,
    start: u32,
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(2) var<storage, read_write> vcache: array<f32>;
@group(0) @binding(3) var<storage, read> cos_sin: array<vec2<f32>>; // [ctx, hd/2]
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let heads = p.n_head + 2u * p.n_kv;
    let total = step.n_tokens * heads * half;
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < total; i += stride) {
        let j = i % half;
        let h = (i / half) % heads;
        let t = i / (half * heads);
        let pos = step.start + t;
        var i0 = 2u * j;
        var i1 = 2u * j + 1u;
        if (p.neox != 0u) {
            i0 = j;
            i1 = j + half;
        }
        let cs = cos_sin[pos * half + j];
        let b = (t * heads + h) * p.hd;
        if (h < p.n_head) {
            let a0 = qkv[b + i0];
            let a1 = qkv[b + i1];
            qkv[b + i0] = a0 * cs.x - a1 * cs.y;
            qkv[b + i1] = a0 * cs.y + a1 * cs.x;
        } else if (h < p.n_head + p.n_kv) {
            let kh = h - p.n_head;
            let a0 = qkv[b + i0];
            let a1 = qkv[b + i1];
            let c = p.cache_base + (kh * p.ctx + pos) * p.hd;
            kcache[c + i0] = a0 * cs.x - a1 * cs.y;
            kcache[c + i1] = a0 * cs.y + a1 * cs.x;
        } else {
            let vh = h - p.n_head - p.n_kv;
            let c = p.cache_base + (vh * p.ctx + pos) * p.hd;
            vcache[c + 2u * j] = qkv[b + 2u * j];
            vcache[c + 2u * j + 1u] = qkv[b + 2u * j + 1u];
        }
    }
}
