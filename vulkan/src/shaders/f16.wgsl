// F16: IEEE half floats, two per word, row-major.
fn load_unit(row: u32, u: u32) {
    let base = (row * p.k + u * 32u) / 2u;
    for (var j = 0u; j < 8u; j++) {
        let a = unpack2x16float(w[base + j * 2u]);
        let b = unpack2x16float(w[base + j * 2u + 1u]);
        wv[j] = vec4<f32>(a.x, a.y, b.x, b.y);
    }
}
