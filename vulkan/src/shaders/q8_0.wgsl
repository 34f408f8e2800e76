// Q8_0, repacked on upload: each row's blocks' first 16 int8 quants (one vec4 each), then the
// row's blocks' last 16 quants, so that threads taking consecutive blocks of a row read
// consecutive words; after all rows, all blocks' f16 scales (two per word) starting at word
// p.aux. Value = d * q. Loads are written out (no loop) so that they are all in flight at once.
// The two vec4 of quants of block `blk` (= row * units + u) of row `row`.
fn q8_halves(row: u32, blk: u32) -> array<vec4<u32>, 2> {
    let units = p.k / 32u;
    let first = blk + row * units;
    return array<vec4<u32>, 2>(w4[first], w4[first + units]);
}
fn q8_vec(q: u32, d: f32) -> vec4<f32> {
    let s = bitcast<i32>(q);
    return d * vec4<f32>(f32(extractBits(s, 0u, 8u)), f32(extractBits(s, 8u, 8u)),
                         f32(extractBits(s, 16u, 8u)), f32(extractBits(s, 24u, 8u)));
}

// One unit as `w_dot` takes it: the quants (elements 0..15 in q[0], 16..31 in q[1]), s.x = d.
fn w_unit(row: u32, u: u32) -> WUnit {
    let blk = row * (p.k / 32u) + u;
    return q8_unit(q8_halves(row, blk), f16_at(p.aux, blk));
}

// w_unit from the block's two vec4 of quants and its scale `d`.
fn q8_unit(ab: array<vec4<u32>, 2>, d: f32) -> WUnit {
    var o: WUnit;
    o.q[0] = ab[0];
    o.q[1] = ab[1];
    o.s = vec4<f32>(d, 0.0, 0.0, 0.0);
    return o;
}

fn load_unit(row: u32, u: u32) -> array<vec4<f32>, 8> {
    return q8_values(w_unit(row, u));
}

fn q8_values(wu: WUnit) -> array<vec4<f32>, 8> {
    let a = wu.q[0];
    let b = wu.q[1];
    let d = wu.s.x;
    return array<vec4<f32>, 8>(q8_vec(a.x, d), q8_vec(a.y, d), q8_vec(a.z, d), q8_vec(a.w, d),
                               q8_vec(b.x, d), q8_vec(b.y, d), q8_vec(b.z, d), q8_vec(b.w, d));
}

// `unit_raw` and `raw_values`: load_unit split into its loads and their decoding, for the
// prompt product's register prefetch (see matmul_coop.wgsl, `coopfetch`).
// Words: the two vec4 of quants in raw[0..1], the word holding the f16 scale in raw[2].x.
fn unit_raw(row: u32, u: u32) -> array<vec4<u32>, 8> {
    let blk = row * (p.k / 32u) + u;
    let ab = q8_halves(row, blk);
    var raw: array<vec4<u32>, 8>;
    raw[0] = ab[0];
    raw[1] = ab[1];
    raw[2].x = w[p.aux + (blk >> 1u)];
    return raw;
}

fn raw_values(raw: array<vec4<u32>, 8>, row: u32, u: u32) -> array<vec4<f32>, 8> {
    let blk = row * (p.k / 32u) + u;
    let d = unpack2x16float(raw[2].x)[blk & 1u];
    return q8_values(q8_unit(array<vec4<u32>, 2>(raw[0], raw[1]), d));
}

// The decode product's dot product of one unit with x (xsum: the sum of the unit's x, used
// by types with an offset). The scale multiplies the unit's sum once instead of every
// weight: the decode products are bound by these ALU instructions, not by memory.
fn q8_raw(q: u32) -> vec4<f32> {
    let s = bitcast<i32>(q);
    return vec4<f32>(f32(extractBits(s, 0u, 8u)), f32(extractBits(s, 8u, 8u)),
                     f32(extractBits(s, 16u, 8u)), f32(extractBits(s, 24u, 8u)));
}

fn w_dot(wu: WUnit, xu: XUnit) -> f32 {
    let a = wu.q[0];
    let b = wu.q[1];
    let d = wu.s.x;
    if (MV_DP4A) {
        // Integer dot products with x as int8 (see MV_DP4A in matmul.wgsl): at most
        // 32 * 128 * 127 in magnitude, no overflow.
        let s = ((dot4I8Packed(a.x, xu.q[0]) + dot4I8Packed(a.y, xu.q[1])) + (dot4I8Packed(a.z, xu.q[2]) + dot4I8Packed(a.w, xu.q[3])))
            + ((dot4I8Packed(b.x, xu.q[4]) + dot4I8Packed(b.y, xu.q[5])) + (dot4I8Packed(b.z, xu.q[6]) + dot4I8Packed(b.w, xu.q[7])));
        return d * xu.qd * f32(s);
    }
    let xs = xu.v;
    return d * (dot(q8_raw(a.x), xs[0]) + dot(q8_raw(a.y), xs[1]) + dot(q8_raw(a.z), xs[2]) + dot(q8_raw(a.w), xs[3])
        + dot(q8_raw(b.x), xs[4]) + dot(q8_raw(b.y), xs[5]) + dot(q8_raw(b.z), xs[6]) + dot(q8_raw(b.w), xs[7]));
}

fn unit_dot(row: u32, u: u32, xu: XUnit) -> f32 {
    return w_dot(w_unit(row, u), xu);
}
