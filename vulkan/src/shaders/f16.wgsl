// F16: IEEE half floats, two per word (the unit functions are in half_words.wgsl).
fn half_vec(a: u32, b: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(a), unpack2x16float(b));
}
