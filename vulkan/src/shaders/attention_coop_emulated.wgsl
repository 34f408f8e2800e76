// The cooperative-matrix operations of attention_coop.wgsl done by plain code, for
// `prefill=coop-emulated` (src/attention_coop.rs writes calls of these functions where the
// kernel has its matrix statements, with the same offsets): the same f16 operands, products
// and f32 sums, on any adapter with f16 and subgroups. As in coop_emulated.wgsl, an
// accumulator is spread over the subgroup: thread `lane` holds elements e = lane + COOP_SG m
// (row e % 16, column e / 16). Offsets and strides are in vec4<f16>, as the built-ins take
// them; layouts as SPIR-V defines them (row-major: element (r, c) at half c of vector
// offset + r stride; column-major: half r of offset + c stride).

// n, as a value the compiler cannot see (p.hd is at least 16, so p.hd * 64 >= 1024 exceeds
// every n here): loops bounded by it are not unrolled. Unrolled, the plain code of the
// matrix operations took lavapipe's compiler many minutes (splitting the kernel at its
// barriers into coroutines) and gigabytes.
fn opaque(n: u32) -> u32 {
    return min(n, p.hd * 64u);
}

struct EmuAcc {
    v: array<f32, 32>, // 256 / COOP_SG values, at most 32 (subgroups of 8)
}

// Element (i, k) of subgroup `sg`'s Q matrix of dims 16 d .. 16 d + 15, read from `q` and
// rounded to f16 as the kernel's staging does (`kv`, through which the kernel loads Q, holds
// K tiles by the time the emulation multiplies).
fn emu_q(tile: vec2<u32>, kvh: u32, sg: u32, d: u32, i: u32, k: u32) -> f32 {
    let rr = tile.x + 16u * sg + i;
    if (rr >= tile.y) {
        return 0.0;
    }
    let group = p.n_head / p.n_kv;
    let t = rr / group;
    let h = kvh * group + rr % group;
    let v = q[(t * (p.n_head + 2u * p.n_kv) + h) * HD4 + 4u * d + k / 4u];
    return f32(f16(v[k % 4u]));
}

// c + Q_d K: Q as `q<d>`, K the column-major B matrix of `kv` at `k_offset` (stride KSV).
fn emu_mul_qk(lane: u32, tile: vec2<u32>, kvh: u32, sg: u32, d: u32, k_offset: u32, c: EmuAcc) -> EmuAcc {
    var out = c;
    for (var m = 0u; m < opaque(256u / COOP_SG); m++) {
        let e = lane + COOP_SG * m;
        let i = e % 16u;
        let j = e / 16u;
        var acc = out.v[m];
        for (var k = 0u; k < opaque(16u); k++) {
            acc += emu_q(tile, kvh, sg, d, i, k) * f32(kv[k_offset + j * KSV + k / 4u][k % 4u]);
        }
        out.v[m] = acc;
    }
    return out;
}

// c + P V: P the row-major A matrix of `pt` at `p_offset` (stride PSV), V the row-major B
// matrix of `kv` at `v_offset` (stride KSV).
fn emu_mul_pv(lane: u32, p_offset: u32, v_offset: u32, c: EmuAcc) -> EmuAcc {
    var out = c;
    for (var m = 0u; m < opaque(256u / COOP_SG); m++) {
        let e = lane + COOP_SG * m;
        let i = e % 16u;
        let j = e / 16u;
        var acc = out.v[m];
        for (var k = 0u; k < opaque(16u); k++) {
            let a = f32(pt[p_offset + i * PSV + k / 4u][k % 4u]);
            acc += a * f32(kv[v_offset + k * KSV + j / 4u][j % 4u]);
        }
        out.v[m] = acc;
    }
    return out;
}

// Stores the accumulator into `st` from `base` with a stride of 16 floats, row-major
// (element (i, j) at base + 16 i + j) or column-major (base + 16 j + i).
fn emu_store(lane: u32, row_major: bool, c: EmuAcc, base: u32) {
    for (var m = 0u; m < opaque(256u / COOP_SG); m++) {
        let e = lane + COOP_SG * m;
        let i = e % 16u;
        let j = e / 16u;
        st[base + select(16u * j + i, 16u * i + j, row_major)] = c.v[m];
    }
}
