// Q6_K, each 210-byte super-block padded to 212 bytes (53 words) on upload: words 0-31 = ql
// (128 bytes, low 4 bits), 32-47 = qh (64 bytes, high 2 bits), 48-51 = 16 int8 scales, word 52
// = f16 d. Unit u is sub-block s = u % 8 of super-block u / 8: half h = s / 4, quarter
// c = s % 4; element l (0..31) uses ql byte 64h + 32(c & 1) + l (low nibble for c < 2),
// qh byte 32h + l shifted by 2c, scale 8h + 2c + l / 16; value = d * scale * (q - 32).
fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let sb = row * (p.k / 256u) + u / 8u;
    let s = u % 8u;
    let h = s / 4u;
    let c = s % 4u;
    let base = sb * 53u;
    let d = unpack2x16float(w[base + 52u]).x;
    let sc_lo = f32(extractBits(bitcast<i32>(byte_at(base + 48u, 8u * h + 2u * c)), 0u, 8u));
    let sc_hi = f32(extractBits(bitcast<i32>(byte_at(base + 48u, 8u * h + 2u * c + 1u)), 0u, 8u));
    let ql_word = base + 16u * h + 8u * (c & 1u);
    let ql_shift = (c / 2u) * 4u;
    let qh_word = base + 32u + 8u * h;
    let qh_shift = 2u * c;
    var out: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        let lq = w[ql_word + j] >> ql_shift;
        let hq = w[qh_word + j] >> qh_shift;
        let q = vec4<f32>(
            f32((lq & 0xfu) | ((hq & 3u) << 4u)),
            f32(((lq >> 8u) & 0xfu) | (((hq >> 8u) & 3u) << 4u)),
            f32(((lq >> 16u) & 0xfu) | (((hq >> 16u) & 3u) << 4u)),
            f32(((lq >> 24u) & 0xfu) | (((hq >> 24u) & 3u) << 4u))) - 32.0;
        let scale = select(sc_hi, sc_lo, j < 4u);
        out[j] = (d * scale) * q;
    }
    return out;
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return dot8(load_unit(row, u), xu.v);
}
