// BF16: bfloat16, two per word (the unit functions are in half_words.wgsl). A bfloat16 is the
// upper half of an f32, so widening is a shift.
fn half_vec(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
