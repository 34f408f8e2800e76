// Q4_0, repacked on upload: all blocks' 16 quant bytes (one vec4 of words per block), then
// all blocks' f16 scales (two per word) starting at word p.aux. Byte i holds element i (low
// nibble) and element i + 16 (high nibble); value = d * (q - 8).
fn q4_0_vec(q: u32, d: f32) -> vec4<f32> {
    return d * (vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu)) - 8.0);
}

// One unit as `w_dot` takes it: the low nibbles (elements 0..15) in q[0] and the high ones
// (16..31) in q[1], masked in place (bytes 0..15); s.x = d.
fn w_unit(row: u32, u: u32) -> WUnit {
    let blk = row * (p.k / 32u) + u;
    return q4_0_unit(w4[blk], f16_at(p.aux, blk));
}

// w_unit from the block's 16 quant bytes `q` and its scale `d`.
fn q4_0_unit(q: vec4<u32>, d: f32) -> WUnit {
    var o: WUnit;
    o.q[0] = q & vec4<u32>(0x0f0f0f0fu);
    o.q[1] = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
    o.s = vec4<f32>(d, 0.0, 0.0, 0.0);
    return o;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return q4_0_values(w_unit(row, u));
}

fn q4_0_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let a = wu.q[0];
    let b = wu.q[1];
    let d = wu.s.x;
    return array<vec4<f32>, 8>(q4_0_vec(a.x, d), q4_0_vec(a.y, d), q4_0_vec(a.z, d), q4_0_vec(a.w, d),
                               q4_0_vec(b.x, d), q4_0_vec(b.y, d), q4_0_vec(b.z, d), q4_0_vec(b.w, d));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the 16 quant bytes in raw[0], the word holding the f16 scale in raw[1].x.
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    let blk = row * (p.k / 32u) + u;
    var raw: array<vec4<u32>, 8>;
    raw[0] = w4[blk];
    raw[1].x = w[p.aux + (blk >> 1u)];
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    let blk = row * (p.k / 32u) + u;
    return q4_0_values(q4_0_unit(raw[0], unpack2x16float(raw[1].x)[blk & 1u]));
}

// The decode product's dot product of one unit with x: d * (sum q * x - 8 * sum x), so the
// offset and the scale cost one instruction per unit instead of two per weight (see q8_0.wgsl).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    let a = wu.q[0];
    let b = wu.q[1];
    let d = wu.s.x;
    if (MV_DP4A) {
        // Integer dot products with x as int8 (see MV_DP4A in matmul.wgsl): the masked
        // nibbles are four bytes 0..15, and the offset 8 becomes 8 * sum(q_x) once per unit.
        let s = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return d * xu.qd * f32(s - 8 * xu.qsum);
    }
    let xs = xu.v;
    let xsum = xu.sum;
    // The masked nibbles are bytes 0..15.
    let s = bytes_dot16(a, xs[0], xs[1], xs[2], xs[3]) + bytes_dot16(b, xs[4], xs[5], xs[6], xs[7]);
    return d * (s - 8.0 * xsum);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
