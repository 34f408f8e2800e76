// Q4_0, repacked on upload: all blocks' 16 quant bytes (one vec4 of words per block), then
// all blocks' f16 scales (two per word) starting at word p.aux. Byte i holds element i (low
// nibble) and element i + 16 (high nibble); value = d * (q - 8).
fn q4_0_vec(q: u32, d: f32) -> vec4<f32> {
    return d * (vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu)) - 8.0);
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let blk = row * (p.k / 32u) + u;
    let d = f16_at(p.aux, blk);
    let q = w4[blk];
    return array<vec4<f32>, 8>(q4_0_vec(q.x, d), q4_0_vec(q.y, d), q4_0_vec(q.z, d), q4_0_vec(q.w, d),
                               q4_0_vec(q.x >> 4u, d), q4_0_vec(q.y >> 4u, d), q4_0_vec(q.z >> 4u, d), q4_0_vec(q.w >> 4u, d));
}
