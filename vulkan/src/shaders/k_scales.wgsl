// The scale and minimum of 32-weight sub-block s (0..7) of a Q4_K or Q5_K super-block from
// its 16-byte head `h`, read with one vec4 load: h.x = f16 d | f16 dmin << 16, h.y..h.w =
// 12 bytes of packed 6-bit scales and mins (ggml's get_scale_min_k4: scales 0-3 and mins 0-3
// in the low 6 bits of bytes 0-3 and 4-7; scales and mins 4-7 in the nibbles of bytes 8-11
// with their top 2 bits in the top bits of bytes 0-7). Decoded from registers, without
// branches or byte loads. Returns (d*sc[s], dmin*m[s]).
fn k_scale_min(h: vec4<u32>, s: u32) -> vec2<f32> {
    let dm = unpack2x16float(h.x);
    let shift = (s & 3u) * 8u;
    let b0 = (h.y >> shift) & 0xffu;
    let b1 = (h.z >> shift) & 0xffu;
    let b2 = (h.w >> shift) & 0xffu;
    let low = s < 4u;
    let sc = select((b2 & 0xfu) | ((b0 >> 6u) << 4u), b0 & 63u, low);
    let mn = select((b2 >> 4u) | ((b1 >> 6u) << 4u), b1 & 63u, low);
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}

// The unit's 32 weights from its quants (bytes 0..31, four to a word) and (scale, minimum):
// the K-quant types with a minimum (Q4_K, Q5_K) share it.
fn k_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let a = wu.q[0];
    let b = wu.q[1];
    let d = wu.s.x;
    let m = wu.s.y;
    return array<vec4<f32>, 8>(k_vec(a.x, d, m), k_vec(a.y, d, m), k_vec(a.z, d, m), k_vec(a.w, d, m),
                               k_vec(b.x, d, m), k_vec(b.y, d, m), k_vec(b.z, d, m), k_vec(b.w, d, m));
}

// Four elements, one a byte.
fn k_vec(q: u32, d: f32, m: f32) -> vec4<f32> {
    return d * vec4<f32>(unpack4xU8(q)) - m;
}

// The f32 decode product of a unit of bytes with x: sum (d q - m) x = d sum(q x) - m sum(x),
// so the scale and minimum cost two instructions per unit instead of one per weight.
fn k_dot(wu: WUnit, xu: XUnit) -> f32 {
    let xs = xu.v;
    let s = bytes_dot16(wu.q[0], xs[0], xs[1], xs[2], xs[3]) + bytes_dot16(wu.q[1], xs[4], xs[5], xs[6], xs[7]);
    return wu.s.x * s - wu.s.y * xu.sum;
}
