// F16 and BF16: two 16-bit floats per word, row-major (a unit is 4 vec4 of words). The type's
// own snippet (f16.wgsl, bf16.wgsl) widens two words to four f32 values in `half_vec`.

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
    return array<vec4<f32>, 8>(half_vec(m0.x, m0.y), half_vec(m0.z, m0.w), half_vec(m1.x, m1.y), half_vec(m1.z, m1.w),
                               half_vec(m2.x, m2.y), half_vec(m2.z, m2.w), half_vec(m3.x, m3.y), half_vec(m3.z, m3.w));
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return unit_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the unit's 16 words in raw[0..3].
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    return w_unit(row, u).q;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    var wu: WUnit;
    wu.q = raw;
    return unit_values(wu);
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    return dot8(unit_values(wu), xu.v);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
