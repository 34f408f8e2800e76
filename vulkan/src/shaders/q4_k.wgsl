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

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    let dm = k_scale_min(q4k_head(row, u), u % 8u);
    let d = dm.x;
    let m = dm.y;
    let q = q4k_unit(row, u);
    let a = q & vec4<u32>(0x0f0f0f0fu);
    let b = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
    return array<vec4<f32>, 8>(q4k_vec(a.x, d, m), q4k_vec(a.y, d, m), q4k_vec(a.z, d, m), q4k_vec(a.w, d, m),
                               q4k_vec(b.x, d, m), q4k_vec(b.y, d, m), q4k_vec(b.z, d, m), q4k_vec(b.w, d, m));
}

// Four elements, one a byte (0..15).
fn q4k_vec(q: u32, d: f32, m: f32) -> vec4<f32> {
    return d * vec4<f32>(unpack4xU8(q)) - m;
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the masked nibbles are four bytes 0..15 per word, multiplied with
// dot4I8Packed; the sub-block's scale and minimum apply once per unit:
// sum (d q - m) x = qd (d sum(q q_x) - m sum(q_x)).
fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let dm = k_scale_min(q4k_head(row, u), u % 8u);
        let q = q4k_unit(row, u);
        let a = q & vec4<u32>(0x0f0f0f0fu);
        let b = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
        let dots = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return xu.qd * (dm.x * f32(dots) - dm.y * f32(xu.qsum));
    }
    return dot8(load_unit(row, u), xu.v);
}
