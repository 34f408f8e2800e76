// Q4_1, GGUF layout as is (20-byte blocks, word aligned): word 0 = f16 d | f16 m << 16, then 16
// quant bytes. Byte i holds element i (low nibble) and i + 16 (high nibble); value = d * q + m.
fn q4_1_vec(q: u32, dm: vec2<f32>) -> vec4<f32> {
    return dm.x * vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu)) + dm.y;
}

// One unit as `w_dot` takes it: the four raw quant words in q[0], s.xy = (d, m).
fn w_unit(row: u32, u: u32) -> WUnit {
    let base = (row * (p.k / 32u) + u) * 5u;
    return q4_1_unit(vec4<u32>(w[base + 1u], w[base + 2u], w[base + 3u], w[base + 4u]), w[base]);
}

// w_unit from the block's four quant words `q` and its (d, m) word.
fn q4_1_unit(q: vec4<u32>, dm: u32) -> WUnit {
    var o: WUnit;
    o.q[0] = q;
    o.s = vec4<f32>(unpack2x16float(dm), 0.0, 0.0);
    return o;
}

fn q4_1_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let q = wu.q[0];
    let dm = wu.s.xy;
    return array<vec4<f32>, 8>(q4_1_vec(q.x, dm), q4_1_vec(q.y, dm), q4_1_vec(q.z, dm), q4_1_vec(q.w, dm),
                               q4_1_vec(q.x >> 4u, dm), q4_1_vec(q.y >> 4u, dm), q4_1_vec(q.z >> 4u, dm), q4_1_vec(q.w >> 4u, dm));
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return q4_1_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the four quant words in raw[0], the (d, m) word in raw[1].x.
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    let base = (row * (p.k / 32u) + u) * 5u;
    var raw: array<vec4<u32>, 8>;
    raw[0] = vec4<u32>(w[base + 1u], w[base + 2u], w[base + 3u], w[base + 4u]);
    raw[1].x = w[base];
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    return q4_1_values(q4_1_unit(raw[0], raw[1].x));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    return dot8(q4_1_values(wu), xu.v);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
