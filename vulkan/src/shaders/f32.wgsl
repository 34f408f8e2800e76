// F32: plain little-endian floats, row-major.
fn load_unit(row: u32, u: u32) {
    let base = row * p.k + u * 32u;
    for (var j = 0u; j < 8u; j++) {
        let o = base + j * 4u;
        wv[j] = vec4<f32>(bitcast<f32>(w[o]), bitcast<f32>(w[o + 1u]), bitcast<f32>(w[o + 2u]), bitcast<f32>(w[o + 3u]));
    }
}
