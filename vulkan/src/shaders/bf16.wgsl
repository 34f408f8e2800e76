// BF16: bfloat16, two per word, row-major (a unit is 4 vec4 of words). A bfloat16 is the
// upper half of an f32, so widening is a shift.
fn bf16_vec(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}

// One unit as `w_dot` takes it: its 16 words (two values each) in q[0..3].
fn w_unit(row: u32, u: u32) -> WUnit {
    let b = (row * p.k + u * 32u) / 8u;
    var o: WUnit;
    o.q[0] = w4[b];
    o.q[1] = w4[b + 1u];
    o.q[2] = w4[b + 2u];
    o.q[3] = w4[b + 3u];
    return o;
}

fn unit_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let m0 = wu.q[0];
    let m1 = wu.q[1];
    let m2 = wu.q[2];
    let m3 = wu.q[3];
    return array<vec4<f32>, 8>(bf16_vec(m0.x, m0.y), bf16_vec(m0.z, m0.w), bf16_vec(m1.x, m1.y), bf16_vec(m1.z, m1.w),
                               bf16_vec(m2.x, m2.y), bf16_vec(m2.z, m2.w), bf16_vec(m3.x, m3.y), bf16_vec(m3.z, m3.w));
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return unit_values(w_unit(row, u));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    return dot8(unit_values(wu), xu.v);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
