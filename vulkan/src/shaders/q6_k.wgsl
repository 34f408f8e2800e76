// Q6_K as quant.rs's q6k_layout uploads it, in four sections over all rows of the buffer
// (ut = the buffer's units = p.aux / 4): unit u (32-weight sub-block u % 8 of super-block
// u / 8) of row `row`, g = row * units + u, has its low 4 bits in vec4 word g (byte i: element
// i in the low nibble, element 16 + i in the high one) and its high 2 bits in words
// p.aux + g and p.aux + ut + g (word h, byte i, bits 2j..2j+1: element 16h + 4j + i); then
// every super-block's 16 int8 scales (one per 16 elements) as a vec4 word, then every
// super-block's f16 d. value = d * scale * (q - 32).
// A decode thread reads its unit with one 16-byte load and two word loads, the threads of a
// subgroup reading consecutive memory with each, plus the super-block's scales (one 16-byte
// load) and d; the file's layout took 16 word loads per unit (the 210-byte blocks are not
// even word aligned) and byte loads for the scales.
struct Q6Unit {
    lo: vec4<u32>, // the low 4 bits
    hi0: u32,      // the high 2 bits of elements 0..15
    hi1: u32,      // of elements 16..31
}

fn q6k_unit(row: u32, u: u32) -> Q6Unit {
    let g = row * (p.k / 32u) + u;
    let ut = p.aux / 4u;
    return Q6Unit(w4[g], w[p.aux + g], w[p.aux + ut + g]);
}

// (d * the scale of the unit's first 16 elements, d * that of its last 16).
fn q6k_scales(row: u32, u: u32) -> vec2<f32> {
    let ut = p.aux / 4u;
    let sb = row * (p.k / 256u) + u / 8u;
    return q6k_scale_pair(w4[(p.aux + 2u * ut) / 4u + sb], w[p.aux + 2u * ut + 4u * (ut / 8u) + sb / 2u], sb, u);
}

// q6k_scales from the super-block's vec4 of int8 scales and the word holding its f16 d.
fn q6k_scale_pair(scales: vec4<u32>, d_word: u32, sb: u32, u: u32) -> vec2<f32> {
    let sc = scales[(u % 8u) / 2u] >> ((u & 1u) * 16u);
    let d = unpack2x16float(d_word)[sb & 1u];
    return d * vec2<f32>(f32(extractBits(bitcast<i32>(sc), 0u, 8u)), f32(extractBits(bitcast<i32>(sc), 8u, 8u)));
}

// Four 6-bit quants (0..63, one a byte): the nibbles of a low word with 2 bits of a high
// word above them.
fn q6_bytes(l: u32, h: u32) -> u32 {
    return (l & 0x0f0f0f0fu) | ((h & 0x03030303u) << 4u);
}

fn q6k_quants(q: Q6Unit) -> array<u32, 8> {
    let lo = q.lo;
    let hi = q.lo >> vec4<u32>(4u);
    return array<u32, 8>(q6_bytes(lo.x, q.hi0), q6_bytes(lo.y, q.hi0 >> 2u), q6_bytes(lo.z, q.hi0 >> 4u), q6_bytes(lo.w, q.hi0 >> 6u),
                         q6_bytes(hi.x, q.hi1), q6_bytes(hi.y, q.hi1 >> 2u), q6_bytes(hi.z, q.hi1 >> 4u), q6_bytes(hi.w, q.hi1 >> 6u));
}

// One unit as `w_dot` takes it: the quants as bytes 0..63 (elements 0..15 in q[0], 16..31
// in q[1]); s.xy = d * the scales of its first and last 16 elements.
fn w_unit(row: u32, u: u32) -> WUnit {
    return q6k_decode(q6k_unit(row, u), q6k_scales(row, u));
}

// w_unit from the unit's quant words and its two scales (times d).
fn q6k_decode(unit: Q6Unit, scales: vec2<f32>) -> WUnit {
    let q = q6k_quants(unit);
    var o: WUnit;
    o.q[0] = vec4<u32>(q[0], q[1], q[2], q[3]);
    o.q[1] = vec4<u32>(q[4], q[5], q[6], q[7]);
    o.s = vec4<f32>(scales, 0.0, 0.0);
    return o;
}

fn q6k_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let a = wu.q[0];
    let b = wu.q[1];
    let sc = wu.s.xy;
    let m = vec4<f32>(32.0);
    return array<vec4<f32>, 8>(
        sc.x * (vec4<f32>(unpack4xU8(a.x)) - m), sc.x * (vec4<f32>(unpack4xU8(a.y)) - m),
        sc.x * (vec4<f32>(unpack4xU8(a.z)) - m), sc.x * (vec4<f32>(unpack4xU8(a.w)) - m),
        sc.y * (vec4<f32>(unpack4xU8(b.x)) - m), sc.y * (vec4<f32>(unpack4xU8(b.y)) - m),
        sc.y * (vec4<f32>(unpack4xU8(b.z)) - m), sc.y * (vec4<f32>(unpack4xU8(b.w)) - m));
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return q6k_values(w_unit(row, u));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the low bits in raw[0], the high bits of elements 0..15 and 16..31 in raw[1].xy,
// the word of the super-block's f16 d in raw[1].z, the vec4 of its int8 scales in raw[2].
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    let q = q6k_unit(row, u);
    let ut = p.aux / 4u;
    let sb = row * (p.k / 256u) + u / 8u;
    var raw: array<vec4<u32>, 8>;
    raw[0] = q.lo;
    raw[1] = vec4<u32>(q.hi0, q.hi1, w[p.aux + 2u * ut + 4u * (ut / 8u) + sb / 2u], 0u);
    raw[2] = w4[(p.aux + 2u * ut) / 4u + sb];
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    let sb = row * (p.k / 256u) + u / 8u;
    let scales = q6k_scale_pair(raw[2], raw[1].z, sb, u);
    return q6k_values(q6k_decode(Q6Unit(raw[0], raw[1].x, raw[1].y), scales));
}

// The decode product's dot product of one unit with x (see unit_dot in q8_0.wgsl). With
// int8 x (MV_DP4A): the quants as bytes 0..63 multiplied with dot4I8Packed, the offset 32
// as 32 * sum(q_x) and the scale once per 16 values:
// sum d sc (q - 32) x = qd (d sc_lo (dots_lo - 32 qsum_lo) + d sc_hi (dots_hi - 32 qsum_hi)).
fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    if (MV_DP4A) {
        let a = wu.q[0];
        let b = wu.q[1];
        let sc = wu.s.xy;
        let lo = (dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1]))
            + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3]));
        let hi = (dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5]))
            + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7]));
        return xu.qd * (sc.x * f32(lo - 32 * xu.qsum_lo) + sc.y * f32(hi - 32 * (xu.qsum - xu.qsum_lo)));
    }
    // f32 x: the same sums with the offset 32 once per 16 values,
    // sum sc (q - 32) x = sc (sum(q x) - 32 sum(x)).
    let xs = xu.v;
    let lo = bytes_dot16(wu.q[0], xs[0], xs[1], xs[2], xs[3]);
    let hi = bytes_dot16(wu.q[1], xs[4], xs[5], xs[6], xs[7]);
    let sc = wu.s.xy;
    return sc.x * (lo - 32.0 * xu.sum_lo) + sc.y * (hi - 32.0 * (xu.sum - xu.sum_lo));
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
