// The scale and minimum of 32-weight sub-block s (0..7) of a Q4_K or Q5_K super-block whose
// first word is `base`: word base = f16 d | f16 dmin << 16, words base+1..3 = 12 bytes of
// packed 6-bit scales and mins (ggml's get_scale_min_k4). Returns (d*sc[s], dmin*m[s]).
fn k_scale_min(base: u32, s: u32) -> vec2<f32> {
    let dm = unpack2x16float(w[base]);
    var sc: u32;
    var mn: u32;
    if (s < 4u) {
        sc = byte_at(base + 1u, s) & 63u;
        mn = byte_at(base + 1u, s + 4u) & 63u;
    } else {
        sc = (byte_at(base + 1u, s + 4u) & 0xfu) | ((byte_at(base + 1u, s - 4u) >> 6u) << 4u);
        mn = (byte_at(base + 1u, s + 4u) >> 4u) | ((byte_at(base + 1u, s) >> 6u) << 4u);
    }
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}
