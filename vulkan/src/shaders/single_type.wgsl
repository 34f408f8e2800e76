// A module of one weight type: no mixed products (see MV_MIXED in matmul.wgsl).
const MV_MIXED: bool = false;

fn unit_dot_b(row: u32, u: u32, xu: XUnit) -> f32 {
    return unit_dot(row, u, xu);
}
