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
    let q = q5k_quants(sb, s);
    var o: WUnit;
    o.q[0] = q[0];
    o.q[1] = q[1];
    o.s = vec4<f32>(k_scale_min(w4[sb * 11u], s), 0.0, 0.0);
    return o;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return k_values(w_unit(row, u));
}

// The prompt product's prefetch (matmul_coop.wgsl, `coopfetch=1`) splits `load_unit` in two:
// `unit_raw` only loads the unit's words (no arithmetic on them, so that the loads stay in
// flight while the thread does other work) and `raw_values` decodes them later, with the
// same values as `load_unit`.
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

// As q5k_quants and w_unit, from the words.
fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    let s = u % 8u;
    let shift = vec4<u32>((s & 1u) * 4u);
    let low = vec4<u32>(0x0f0f0f0fu);
    let bit = vec4<u32>(0x01010101u);
    var wu: WUnit;
    wu.q[0] = ((raw[1] >> shift) & low) | (((raw[3] >> vec4<u32>(s)) & bit) << vec4<u32>(4u));
    wu.q[1] = ((raw[2] >> shift) & low) | (((raw[4] >> vec4<u32>(s)) & bit) << vec4<u32>(4u));
    wu.s = vec4<f32>(k_scale_min(raw[0], s), 0.0, 0.0);
    return k_values(wu);
}

// The 5-bit quants of sub-block s of super-block sb, four consecutive elements to a word,
// one a byte (elements 0..15 in the first vec4, 16..31 in the second).
fn q5k_quants(sb: u32, s: u32) -> array<vec4<u32>, 2> {
    let qv = sb * 11u + 3u + (s / 2u) * 2u;
    let hv = sb * 11u + 1u;
    let shift = vec4<u32>((s & 1u) * 4u);
    let low = vec4<u32>(0x0f0f0f0fu);
    let bit = vec4<u32>(0x01010101u);
    return array<vec4<u32>, 2>(
        ((w4[qv] >> shift) & low) | (((w4[hv] >> vec4<u32>(s)) & bit) << vec4<u32>(4u)),
        ((w4[qv + 1u] >> shift) & low) | (((w4[hv + 1u] >> vec4<u32>(s)) & bit) << vec4<u32>(4u)));
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
    return dot8(k_values(wu), xu.v);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
