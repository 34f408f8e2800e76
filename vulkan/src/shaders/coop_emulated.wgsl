// The cooperative-matrix operations of matmul_coop.wgsl done by plain code, for
// `prefill=coop-emulated` (kernels.rs `coop_emulated_source` substitutes these functions for
// the built-ins): the same f16 operands, products and f32 sums, on any adapter with f16 and
// subgroups. A 16x16 accumulator is spread over the subgroup as the hardware's is: thread
// `lane` holds elements e = lane + COOP_SG m (row e % 16, token e / 16), 256 / COOP_SG of
// them. A loaded A or B matrix is the vector offset of its first element in coop_w or coop_x,
// read with the layouts SPIR-V defines for the loads, strides counted in vectors: A row-major
// (element (i, k) at half k of vector offset + i COOP_SV), B column-major (element (k, j) at
// half k of vector offset + j COOP_SV).

struct EmuAcc {
    v: array<f32, 32>, // 256 / COOP_SG values, at most 32 (subgroups of 8)
}

fn emu_load(offset: u32) -> u32 {
    return offset;
}

// c + a b for the elements this thread holds.
fn emu_mul_add(lane: u32, a: u32, b: u32, c: EmuAcc) -> EmuAcc {
    var out = c;
    for (var m = 0u; m < 256u / COOP_SG; m++) {
        let e = lane + COOP_SG * m;
        let ra = a + (e % 16u) * COOP_SV;
        let cb = b + (e / 16u) * COOP_SV;
        var acc = out.v[m];
        for (var k = 0u; k < 16u; k++) {
            acc += f32(coop_w[ra + k / COOP_VEC][k % COOP_VEC]) * f32(coop_x[cb + k / COOP_VEC][k % COOP_VEC]);
        }
        out.v[m] = acc;
    }
    return out;
}

// Stores the accumulator column-major with a stride of 16 (element (i, j) at base + 16 j + i),
// as `coopStore(c, &coop_out[base], 16u)` does.
fn emu_store(c: EmuAcc, base: u32, lane: u32) {
    for (var m = 0u; m < 256u / COOP_SG; m++) {
        let e = lane + COOP_SG * m;
        coop_out[base + (e / 16u) * 16u + e % 16u] = c.v[m];
    }
}
