// `attention_coop` writing its output as the attention output product's f16 x (`x16` in
// matmul_coop.wgsl) instead of f32, so that the product runs without its `coop_x_f16`
// dispatch (tuning key `x16fuse`). Appended to attention_coop.wgsl, and followed by
// f16_pack.wgsl (`pack_f16`), by src/attention_coop.rs, which has the kernel call
// `write_block_x16` where it calls `write_block`; the module then never writes `out`.
//
// x16 holds token t's value i (of n_head HD) in half i % 8 of word t n_head HD / 8 + i / 8,
// so query head h's dims 16 d .. 16 d + 15 are words (t n_head + h) HD / 8 + 2 d and the next.

@group(0) @binding(16) var<storage, read_write> x16: array<vec4<u32>>;

// As `write_block`, with the values divided as it divides them and then rounded as
// `coop_x_f16` rounds the f32 output: two threads per row, eight dims (one word) each.
fn write_block_x16(sg: u32, lane: u32, tile: vec2<u32>, kvh: u32, d: u32) {
    let group = p.n_head / p.n_kv;
    for (var e = lane; e < 32u; e += COOP_SG) {
        let i = e / 2u;
        let r = sg * 16u + i;
        let rr = tile.x + r;
        if (rr < tile.y) {
            let t = rr / group;
            let h = kvh * group + rr % group;
            let b = sg * 256u + 16u * i + 8u * (e % 2u);
            let lo = vec4<f32>(st[b], st[b + 1u], st[b + 2u], st[b + 3u]) / row_sum[r];
            let hi = vec4<f32>(st[b + 4u], st[b + 5u], st[b + 6u], st[b + 7u]) / row_sum[r];
            x16[(t * p.n_head + h) * (HD / 8u) + 2u * d + e % 2u] =
                vec4<u32>(pack_f16(lo), pack_f16(hi));
        }
    }
}
