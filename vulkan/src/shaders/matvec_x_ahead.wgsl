// The decode products' unit of x and RMSNorm scale (`mv_x`, `mv_norm_scale` in matvec_rows)
// where x was quantized to int8 once for the whole product by a dispatch before it, and
// is read from `xq` (matvec_multi.wgsl): the plain input (mode 0) by `quantize_x` (`xq1=1`),
// the values and arithmetic of `x_unit`, so the products equal those that quantize in every
// workgroup bit for bit; the RMSNorm input (mode 1: matvec_norm, matvec_norm_rope,
// matvec_norm_glu; `xq1=2`) by `norm_quantize_x`, normalized before the quantization as in a
// multi-token step, so the scale is already applied. Only the int8 types (MV_DP4A) are
// compiled from this module; SiLU·mul input (mode 2) keeps `x_unit`.
fn mv_x(mode: u32, u: u32) -> XUnit {
    if (mode == 2u) {
        return x_unit(mode, u);
    }
    return xq_unit(mv_token, u);
}

fn mv_norm_scale(sq: f32, l: Lanes) -> f32 {
    return 1.0;
}
