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

// The decode product's dot product of one unit with x: d * (sum q * x - 8 * sum x), so the
// offset and the scale cost one instruction per unit instead of two per weight (see q8_0.wgsl).
fn q4_raw(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu));
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    let blk = row * (p.k / 32u) + u;
    let d = f16_at(p.aux, blk);
    let q = w4[blk];
    if (MV_DP4A) {
        // Integer dot products with x as int8 (see MV_DP4A in matmul.wgsl): the nibbles of a
        // word masked in place are four bytes 0..15 (elements i..i+3, or i+16..i+19 for the
        // high nibbles), and the offset 8 becomes 8 * sum(q_x) once per unit.
        let m = 0x0f0f0f0fu;
        let s = ((dot4I8Packed(q.x & m, xu.q[0]) + dot4I8Packed(q.y & m, xu.q[1])) + (dot4I8Packed(q.z & m, xu.q[2]) + dot4I8Packed(q.w & m, xu.q[3])))
            + ((dot4I8Packed((q.x >> 4u) & m, xu.q[4]) + dot4I8Packed((q.y >> 4u) & m, xu.q[5]))
            + (dot4I8Packed((q.z >> 4u) & m, xu.q[6]) + dot4I8Packed((q.w >> 4u) & m, xu.q[7])));
        return d * xu.qd * f32(s - 8 * xu.qsum);
    }
    let xs = xu.v;
    let xsum = xu.sum;
    let s = dot(q4_raw(q.x), xs[0]) + dot(q4_raw(q.y), xs[1]) + dot(q4_raw(q.z), xs[2]) + dot(q4_raw(q.w), xs[3])
        + dot(q4_raw(q.x >> 4u), xs[4]) + dot(q4_raw(q.y >> 4u), xs[5]) + dot(q4_raw(q.z >> 4u), xs[6])
        + dot(q4_raw(q.w >> 4u), xs[7]);
    return d * (s - 8.0 * xsum);
}
