// f32 values as the f16 words of `x16` (matmul_coop.wgsl), which the prompt products on
// cooperative matrices stage. Appended by kernels.rs and attention_coop.rs to every module
// that writes x16 (`coop_x_f16`, and with `x16fuse=1` x16_out.wgsl and
// attention_coop_x16.wgsl), so that all of them round the same way: the values are rounded by
// the staging's own conversion, vec4<f16>(v), and then packed exactly (naga has no bitcast
// between vectors of different sizes, so the packing goes through f32, which holds every f16
// value).
fn pack_f16(v: vec4<f32>) -> vec2<u32> {
    let r = vec4<f32>(vec4<f16>(v));
    return vec2<u32>(pack2x16float(r.xy), pack2x16float(r.zw));
}
