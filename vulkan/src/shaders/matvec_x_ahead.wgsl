// The decode products' unit of x (`mv_x` in matvec_rows) where the plain input was quantized
// to int8 once for the whole product by a `quantize_x` dispatch before it (`xq1=1`): read from
// `xq` (matvec_multi.wgsl), the values and arithmetic of `x_unit`, so the products equal those
// that quantize in every workgroup bit for bit. Only the plain input (mode 0) of the int8
// types (MV_DP4A) is compiled from this module; the other modes keep `x_unit`.
fn mv_x(mode: u32, u: u32) -> XUnit {
    if (mode == 0u) {
        return xq_unit(mv_token, u);
    }
    return x_unit(mode, u);
}
