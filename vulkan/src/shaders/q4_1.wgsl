// Q4_1, GGUF layout as is (20-byte blocks, word aligned): word 0 = f16 d | f16 m << 16, then 16
// quant bytes. Byte i holds element i (low nibble) and i + 16 (high nibble); value = d * q + m.
fn load_unit(row: u32, u: u32) {
    let blk = row * (p.k / 32u) + u;
    let base = blk * 5u;
    let dm = unpack2x16float(w[base]);
    for (var j = 0u; j < 4u; j++) {
        let q = w[base + 1u + j];
        let lo = vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu));
        let hi = vec4<f32>(f32((q >> 4u) & 0xfu), f32((q >> 12u) & 0xfu), f32((q >> 20u) & 0xfu), f32((q >> 28u) & 0xfu));
        wv[j] = dm.x * lo + dm.y;
        wv[j + 4u] = dm.x * hi + dm.y;
    }
}
