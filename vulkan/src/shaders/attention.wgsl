// Causal attention of each query token over the KV cache, with grouped-query heads.
// One workgroup per (query head, token). Positions are visited in tiles of 64: each thread
// scores one position, then the tile's softmax weights update a running (max, sum, output)
// as in flash attention, so no score buffer of context length is needed.
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
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> kcache: array<f32>;
@group(0) @binding(2) var<storage, read> vcache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;

const WG: u32 = 64u;
const MAX_HD: u32 = 256u;
const NEG: f32 = -1.0e30;
var<workgroup> qs: array<f32, 256>;
var<workgroup> pr: array<f32, 64>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let kvh = h / (p.n_head / p.n_kv);
    let last = step.start + t; // attends positions 0..=last
    // q of token t is the first n_head heads of its [q | k | v] row.
    let qb = (t * (p.n_head + 2u * p.n_kv) + h) * p.hd;
    for (var i = lid.x; i < p.hd; i += WG) {
        qs[i] = q[qb + i] * p.scale;
    }
    workgroupBarrier();
    let cb = p.cache_base + kvh * p.ctx * p.hd;
    var m = NEG;
    var l = 0.0;
    var acc: array<f32, 4>; // dims lid, lid+64, lid+128, lid+192
    for (var i = 0u; i < 4u; i++) {
        acc[i] = 0.0;
    }
    let tiles = last / WG + 1u;
    for (var tile = 0u; tile < tiles; tile++) {
        let pos = tile * WG + lid.x;
        var s = NEG;
        if (pos <= last) {
            // Four independent partial sums keep several loads in flight.
            let kb = cb + pos * p.hd;
            var d = vec4<f32>(0.0);
            for (var i = 0u; i < p.hd; i += 4u) {
                d += vec4<f32>(qs[i], qs[i + 1u], qs[i + 2u], qs[i + 3u])
                    * vec4<f32>(kcache[kb + i], kcache[kb + i + 1u], kcache[kb + i + 2u], kcache[kb + i + 3u]);
            }
            s = d.x + d.y + d.z + d.w;
        }
        pr[lid.x] = s;
        workgroupBarrier();
        var tmax = NEG;
        for (var j = 0u; j < WG; j++) {
            tmax = max(tmax, pr[j]);
        }
        let new_m = max(m, tmax);
        let corr = exp(m - new_m);
        workgroupBarrier();
        pr[lid.x] = select(0.0, exp(s - new_m), pos <= last);
        workgroupBarrier();
        var tsum = 0.0;
        for (var j = 0u; j < WG; j++) {
            tsum += pr[j];
        }
        l = l * corr + tsum;
        m = new_m;
        for (var i = 0u; i < 4u; i++) {
            let dim = lid.x + i * WG;
            if (dim < p.hd) {
                // A constant trip count lets the compiler unroll and overlap the loads;
                // positions past `last` have weight 0 and read a valid row instead.
                var a = acc[i] * corr;
                for (var j = 0u; j < WG; j++) {
                    let pos_j = min(tile * WG + j, last);
                    a += pr[j] * vcache[cb + pos_j * p.hd + dim];
                }
                acc[i] = a;
            }
        }
        workgroupBarrier();
    }
    let ob = (t * p.n_head + h) * p.hd;
    for (var i = 0u; i < 4u; i++) {
        let dim = lid.x + i * WG;
        if (dim < p.hd) {
            out[ob + dim] = acc[i] / l;
        }
    }
}
