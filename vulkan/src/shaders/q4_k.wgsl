// Q4_K as quant.rs's q4k_layout uploads it: unit u (32-weight sub-block u % 8 of super-block
// u / 8) of row `row` is vec4 word row * units + u; byte i of it holds element i in its low
// nibble and element 16 + i in its high nibble. The super-blocks' 16-byte heads (k_scales.wgsl)
// follow from word p.aux on, in the same order. value = d*sc[s]*q - dmin*m[s].
// A decode thread reads its unit with one 16-byte load and its head with another, and the
// threads of a subgroup (consecutive units) read 512 consecutive bytes per load: the file's
// layout, where two sub-blocks share each byte, took two 16-byte loads per unit to use half of
// each, plus four scattered word loads for the scales.
fn q4k_unit(row: u32, u: u32) -> vec4<u32> {
    return w4[row * (p.k / 32u) + u];
}

fn q4k_head(row: u32, u: u32) -> vec4<u32> {
    return w4[p.aux / 4u + row * (p.k / 256u) + u / 8u];
}

// One unit as `w_dot` takes it: the nibbles masked in place, four bytes 0..15 per word
// (elements 0..15 in q[0], 16..31 in q[1]); s.xy = (d*sc, dmin*m) of its sub-block.
fn w_unit(row: u32, u: u32) -> WUnit {
    return q4k_decode(q4k_unit(row, u), q4k_head(row, u), u);
}

// w_unit from unit u's quant word `q` and its super-block's `head`.
fn q4k_decode(q: vec4<u32>, head: vec4<u32>, u: u32) -> WUnit {
    var o: WUnit;
    o.q[0] = q & vec4<u32>(0x0f0f0f0fu);
    o.q[1] = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
    o.s = vec4<f32>(k_scale_min(head, u % 8u), 0.0, 0.0);
    return o;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return k_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the unit's quant bytes in raw[0], its super-block's head in raw[1].
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    var raw: array<vec4<u32>, 8>;
    raw[0] = q4k_unit(row, u);
    raw[1] = q4k_head(row, u);
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    return k_values(q4k_decode(raw[0], raw[1], u));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the masked nibbles are four bytes 0..15 per word, multiplied with
// dot4I8Packed; the sub-block's scale and minimum apply once per unit:
// sum (d q - m) x = qd (d sum(q q_x) - m sum(q_x)). Q5_K's is the same on 5-bit quants.
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let a = wu.q[0];
        let b = wu.q[1];
        let dots = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return xu.qd * (wu.s.x * f32(dots) - wu.s.y * f32(xu.qsum));
    }
    return k_dot(wu, xu);
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
