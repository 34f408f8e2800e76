// The decode products' unit of x (`mv_x` in matvec_rows): every workgroup transforms and, with
// MV_DP4A, quantizes the x it reads itself. Modules with this file never bind `xq`.
fn mv_x(mode: u32, u: u32) -> XUnit {
    return x_unit(mode, u);
}
