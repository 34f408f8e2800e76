// A prompt product's x written straight to the f16 copy that `matmul_coop` stages (`x16` in
// matmul_coop.wgsl), by the kernel that computes x, so that the product runs without its
// `coop_x_f16` dispatch (tuning key `x16fuse`). Appended by kernels.rs, behind
// `enable f16;` and followed by f16_pack.wgsl (`pack_f16`, the rounding `coop_x_f16` uses),
// to the module of the kernel that computes x: rmsnorm.wgsl or silu_mul.wgsl, which define
//   x16_row(t, li) -> f32: a value for the whole of token t's row (the norm's scale), from
//     uniform control flow (it may use workgroup barriers);
//   x16_value(t, i, row) -> f32: element i of token t's x, computed as that module's own
//     kernel computes it, so that the halves are those `coop_x_f16` makes of its output;
// and whose `Params` starts with `n`, the elements per token (k of the product).
//
// One thread per 8 values (a word of x16), workgroups (x, token): the host dispatches one
// workgroup per token where x16_row reduces over the row (the norm), else enough to cover it.

@group(0) @binding(16) var<storage, read_write> x16: array<vec4<u32>>;

@compute @workgroup_size(64)
fn x16_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wid.y;
    let row = x16_row(t, lid.x);
    let words = p.n / 8u;
    for (var w = wid.x * 64u + lid.x; w < words; w += nwg.x * 64u) {
        let i = 8u * w;
        let lo = vec4<f32>(x16_value(t, i, row), x16_value(t, i + 1u, row),
                           x16_value(t, i + 2u, row), x16_value(t, i + 3u, row));
        let hi = vec4<f32>(x16_value(t, i + 4u, row), x16_value(t, i + 5u, row),
                           x16_value(t, i + 6u, row), x16_value(t, i + 7u, row));
        x16[t * words + w] = vec4<u32>(pack_f16(lo), pack_f16(hi));
    }
}
