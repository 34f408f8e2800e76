// Q4_1, GGUF layout as is (20-byte blocks, word aligned): word 0 = f16 d | f16 m << 16, then 16
// quant bytes. Byte i holds element i (low nibble) and i + 16 (high nibble); value = d * q + m.
fn q4_1_vec(q: u32, dm: vec2<f32>) -> vec4<f32> {
    return dm.x * vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu)) + dm.y;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let blk = row * (p.k / 32u) + u;
    let base = blk * 5u;
    let dm = unpack2x16float(w[base]);
    let q0 = w[base + 1u];
    let q1 = w[base + 2u];
    let q2 = w[base + 3u];
    let q3 = w[base + 4u];
    return array<vec4<f32>, 8>(q4_1_vec(q0, dm), q4_1_vec(q1, dm), q4_1_vec(q2, dm), q4_1_vec(q3, dm),
                               q4_1_vec(q0 >> 4u, dm), q4_1_vec(q1 >> 4u, dm), q4_1_vec(q2 >> 4u, dm), q4_1_vec(q3 >> 4u, dm));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return dot8(load_unit(row, u), xu.v);
}
