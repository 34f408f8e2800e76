// Q8_0, repacked on upload: all blocks' 32 int8 quants (8 words per block), then all blocks'
// f16 scales (two per word) starting at word p.aux. Value = d * q.
fn load_unit(row: u32, u: u32) {
    let blk = row * (p.k / 32u) + u;
    let d = f16_at(p.aux, blk);
    let base = blk * 8u;
    for (var j = 0u; j < 8u; j++) {
        let q = bitcast<i32>(w[base + j]);
        wv[j] = d * vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),
                              f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
    }
}
