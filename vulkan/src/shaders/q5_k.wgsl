// Q5_K, GGUF layout as is (176-byte super-blocks of 256 weights, 16-byte aligned): words 0-3
// = the head that k_scales.wgsl decodes (f16 d, f16 dmin, 12 bytes of packed 6-bit scales
// and mins), read as one vec4, words 4-11 = 32 qh bytes, words 12-43 = 128 quant bytes. Unit
// u is 32-weight sub-block s = u % 8 of super-block u / 8: element l takes the low (even s)
// or high (odd s) nibble of quant byte 32*(s/2) + l and, as its fifth bit, bit s of qh byte
// l; value = d*sc[s]*q - dmin*m[s].

// One unit as `w_dot` takes it: the 5-bit quants, four bytes 0..31 per word (q5k_quants);
// s.xy = (d*sc, dmin*m) of its sub-block.
fn w_unit(row: u32, u: u32) -> WUnit {
    let sb = row * (p.k / 256u) + u / 8u;
    let s = u % 8u;
    return q5k_decode(q5k_quants(sb, s), w4[sb * 11u], s);
}

// w_unit from sub-block s's 5-bit quants `q` and its super-block's `head`.
fn q5k_decode(q: array<vec4<u32>, 2>, head: vec4<u32>, s: u32) -> WUnit {
    var o: WUnit;
    o.q[0] = q[0];
    o.q[1] = q[1];
    o.s = vec4<f32>(k_scale_min(head, s), 0.0, 0.0);
    return o;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return k_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the super-block's head in raw[0], the two vec4 of quant bytes that hold the unit's
// nibbles in raw[1..2], the two of qh bytes in raw[3..4].
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    let sb = row * (p.k / 256u) + u / 8u;
    let qv = sb * 11u + 3u + ((u % 8u) / 2u) * 2u;
    let hv = sb * 11u + 1u;
    var raw: array<vec4<u32>, 8>;
    raw[0] = w4[sb * 11u];
    raw[1] = w4[qv];
    raw[2] = w4[qv + 1u];
    raw[3] = w4[hv];
    raw[4] = w4[hv + 1u];
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    let s = u % 8u;
    let q = q5k_bits(array<vec4<u32>, 2>(raw[1], raw[2]), array<vec4<u32>, 2>(raw[3], raw[4]), s);
    return k_values(q5k_decode(q, raw[0], s));
}

// The 5-bit quants of sub-block s of super-block sb, four consecutive elements to a word,
// one a byte (elements 0..15 in the first vec4, 16..31 in the second).
fn q5k_quants(sb: u32, s: u32) -> array<vec4<u32>, 2> {
    let qv = sb * 11u + 3u + (s / 2u) * 2u;
    let hv = sb * 11u + 1u;
    return q5k_bits(array<vec4<u32>, 2>(w4[qv], w4[qv + 1u]), array<vec4<u32>, 2>(w4[hv], w4[hv + 1u]), s);
}

// q5k_quants from the two vec4 of quant bytes `q` that hold sub-block s's nibbles and the
// two of qh bytes `h`.
fn q5k_bits(q: array<vec4<u32>, 2>, h: array<vec4<u32>, 2>, s: u32) -> array<vec4<u32>, 2> {
    let shift = vec4<u32>((s & 1u) * 4u);
    let low = vec4<u32>(0x0f0f0f0fu);
    let bit = vec4<u32>(0x01010101u);
    return array<vec4<u32>, 2>(
        ((q[0] >> shift) & low) | (((h[0] >> vec4<u32>(s)) & bit) << vec4<u32>(4u)),
        ((q[1] >> shift) & low) | (((h[1] >> vec4<u32>(s)) & bit) << vec4<u32>(4u)));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the 5-bit quants multiplied with dot4I8Packed; scale and minimum once
// per unit, as in q4_k.wgsl.
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let a = wu.q[0];
        let b = wu.q[1];
        let dots = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return xu.qd * (wu.s.x * f32(dots) - wu.s.y * f32(xu.qsum));
    }
    return k_dot(wu, xu);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
