// Q4_K, GGUF layout as is (144-byte super-blocks of 256 weights, word aligned): word 0 =
// f16 d | f16 dmin << 16, words 1-3 = 12 bytes of packed 6-bit scales and mins, words 4-35 =
// 128 quant bytes. Unit u is 32-weight sub-block s = u % 8 of super-block u / 8: bytes
// 32*(s/2) .. +32, low nibbles for even s, high for odd; value = d*sc[s]*q - dmin*m[s].
fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let sb = row * (p.k / 256u) + u / 8u;
    let s = u % 8u;
    let base = sb * 36u;
    let dm = k_scale_min(base, s);
    let d = dm.x;
    let m = dm.y;
    // The 32 quant bytes of this sub-block: two vec4 of words (144-byte blocks keep them aligned).
    let qv = (base + 4u + (s / 2u) * 8u) / 4u;
    let shift = (s & 1u) * 4u;
    let a = w4[qv] >> vec4<u32>(shift);
    let b = w4[qv + 1u] >> vec4<u32>(shift);
    return array<vec4<f32>, 8>(q4k_vec(a.x, d, m), q4k_vec(a.y, d, m), q4k_vec(a.z, d, m), q4k_vec(a.w, d, m),
                               q4k_vec(b.x, d, m), q4k_vec(b.y, d, m), q4k_vec(b.z, d, m), q4k_vec(b.w, d, m));
}

fn q4k_vec(q: u32, d: f32, m: f32) -> vec4<f32> {
    return d * vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu)) - m;
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the nibbles masked in place are four bytes 0..15, multiplied with
// dot4I8Packed; the sub-block's scale and minimum apply once per unit:
// sum (d q - m) x = qd (d sum(q q_x) - m sum(q_x)).
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let sb = row * (p.k / 256u) + u / 8u;
        let s = u % 8u;
        let base = sb * 36u;
        let dm = k_scale_min(base, s);
        let qv = (base + 4u + (s / 2u) * 8u) / 4u;
        let shift = vec4<u32>((s & 1u) * 4u);
        let low = vec4<u32>(0x0f0f0f0fu);
        let a = (w4[qv] >> shift) & low;
        let b = (w4[qv + 1u] >> shift) & low;
        let dots = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return xu.qd * (dm.x * f32(dots) - dm.y * f32(xu.qsum));
    }
    return dot8(load_unit(row, u), xu.v);
}
