// F32: plain little-endian floats, row-major (a unit is 8 vec4 of words).
fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let b = (row * p.k + u * 32u) / 4u;
    return array<vec4<f32>, 8>(bitcast<vec4<f32>>(w4[b]), bitcast<vec4<f32>>(w4[b + 1u]), bitcast<vec4<f32>>(w4[b + 2u]),
                               bitcast<vec4<f32>>(w4[b + 3u]), bitcast<vec4<f32>>(w4[b + 4u]), bitcast<vec4<f32>>(w4[b + 5u]),
                               bitcast<vec4<f32>>(w4[b + 6u]), bitcast<vec4<f32>>(w4[b + 7u]));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return dot8(load_unit(row, u), xu.v);
}
