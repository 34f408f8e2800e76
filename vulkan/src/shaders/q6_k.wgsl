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
    let sc = q6k_scales(base, h, c);
    let sc_lo = sc.x;
    let sc_hi = sc.y;
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

// The int8 scales of unit (h, c) of the super-block at word `base`: its first 16 elements'
// and its last 16's.
fn q6k_scales(base: u32, h: u32, c: u32) -> vec2<f32> {
    let sc = byte_at(base + 48u, 8u * h + 2u * c) | (byte_at(base + 48u, 8u * h + 2u * c + 1u) << 8u);
    return vec2<f32>(f32(extractBits(bitcast<i32>(sc), 0u, 8u)), f32(extractBits(bitcast<i32>(sc), 8u, 8u)));
}

// Four 6-bit quants (0..63, one a byte) from a word of ql (shifted to its nibbles) and one
// of qh (shifted to its 2 bits).
fn q6_bytes(lq: u32, hq: u32) -> u32 {
    return (lq & 0x0f0f0f0fu) | ((hq & 0x03030303u) << 4u);
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the quants as bytes 0..63 multiplied with dot4I8Packed, the offset 32
// as 32 * sum(q_x) and the scale once per 16 values:
// sum d sc (q - 32) x = d qd (sc_lo (dots_lo - 32 qsum_lo) + sc_hi (dots_hi - 32 qsum_hi)).
// All loads are written out (no loop), so that they are in flight at once.
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let sb = row * (p.k / 256u) + u / 8u;
        let s = u % 8u;
        let h = s / 4u;
        let c = s % 4u;
        let base = sb * 53u;
        let d = unpack2x16float(w[base + 52u]).x;
        let sc = q6k_scales(base, h, c);
        let sc_lo = sc.x;
        let sc_hi = sc.y;
        let lw = base + 16u * h + 8u * (c & 1u);
        let ls = (c / 2u) * 4u;
        let hw = base + 32u + 8u * h;
        let hs = 2u * c;
        let l0 = w[lw]; let l1 = w[lw + 1u]; let l2 = w[lw + 2u]; let l3 = w[lw + 3u];
        let l4 = w[lw + 4u]; let l5 = w[lw + 5u]; let l6 = w[lw + 6u]; let l7 = w[lw + 7u];
        let h0 = w[hw]; let h1 = w[hw + 1u]; let h2 = w[hw + 2u]; let h3 = w[hw + 3u];
        let h4 = w[hw + 4u]; let h5 = w[hw + 5u]; let h6 = w[hw + 6u]; let h7 = w[hw + 7u];
        let lo = (dot4I8Packed(q6_bytes(l0 >> ls, h0 >> hs), xu.q[0]) + dot4I8Packed(q6_bytes(l1 >> ls, h1 >> hs), xu.q[1]))
            + (dot4I8Packed(q6_bytes(l2 >> ls, h2 >> hs), xu.q[2]) + dot4I8Packed(q6_bytes(l3 >> ls, h3 >> hs), xu.q[3]));
        let hi = (dot4I8Packed(q6_bytes(l4 >> ls, h4 >> hs), xu.q[4]) + dot4I8Packed(q6_bytes(l5 >> ls, h5 >> hs), xu.q[5]))
            + (dot4I8Packed(q6_bytes(l6 >> ls, h6 >> hs), xu.q[6]) + dot4I8Packed(q6_bytes(l7 >> ls, h7 >> hs), xu.q[7]));
        return d * xu.qd * (sc_lo * f32(lo - 32 * xu.qsum_lo) + sc_hi * f32(hi - 32 * (xu.qsum - xu.qsum_lo)));
    }
    return dot8(load_unit(row, u), xu.v);
}
