// Q4_0, repacked on upload: all blocks' 16 quant bytes (4 words per block), then all blocks'
// f16 scales (two per word) starting at word p.aux. Byte i holds element i (low nibble) and
// element i + 16 (high nibble); value = d * (q - 8).
fn load_unit(row: u32, u: u32) {
    let blk = row * (p.k / 32u) + u;
    let d = f16_at(p.aux, blk);
    let base = blk * 4u;
    for (var j = 0u; j < 4u; j++) {
        let q = w[base + j];
        let lo = vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu));
        let hi = vec4<f32>(f32((q >> 4u) & 0xfu), f32((q >> 12u) & 0xfu), f32((q >> 20u) & 0xfu), f32((q >> 28u) & 0xfu));
        wv[j] = d * (lo - 8.0);
        wv[j + 4u] = d * (hi - 8.0);
    }
}
