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
