// The decode products' unit of x and RMSNorm scale (`mv_x`, `mv_norm_scale` in matvec_rows):
// every workgroup transforms and, with MV_DP4A, quantizes the x it reads itself, and
// normalizes with the sum of the squares of the x it read (mode 1). Modules with this file
// never bind `xq`.
fn mv_x(mode: u32, u: u32) -> XUnit {
    return x_unit(mode, u);
}

// 1 / rms(x) from each thread's sum of squares `sq` (call from uniform control flow).
fn mv_norm_scale(sq: f32, l: Lanes) -> f32 {
    return 1.0 / sqrt(reduce_all(sq, l) / f32(p.k) + p.eps);
}
