// F32: plain little-endian floats, row-major (a unit is 8 vec4 of words).
// One unit as `w_dot` takes it: its 32 words in q[0..7].
fn w_unit(row: u32, u: u32) -> WUnit {
    let b = (row * p.k + u * 32u) / 4u;
    return WUnit(array<vec4<u32>, 8>(w4[b], w4[b + 1u], w4[b + 2u], w4[b + 3u], w4[b + 4u], w4[b + 5u],
                                     w4[b + 6u], w4[b + 7u]), vec4<f32>(0.0));
}

fn unit_values(wu: WUnit) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(bitcast<vec4<f32>>(wu.q[0]), bitcast<vec4<f32>>(wu.q[1]), bitcast<vec4<f32>>(wu.q[2]),
                               bitcast<vec4<f32>>(wu.q[3]), bitcast<vec4<f32>>(wu.q[4]), bitcast<vec4<f32>>(wu.q[5]),
                               bitcast<vec4<f32>>(wu.q[6]), bitcast<vec4<f32>>(wu.q[7]));
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return unit_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the unit's 32 floats.
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    return w_unit(row, u).q;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    return unit_values(WUnit(raw, vec4<f32>(0.0)));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    return dot8(unit_values(wu), xu.v);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
