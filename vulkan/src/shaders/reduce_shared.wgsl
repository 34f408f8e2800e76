// Workgroup sums through workgroup memory only (a tree with one barrier per level), for
// adapters without subgroup operations. Same interface as reduce_subgroup.wgsl.

struct Lanes {
    @builtin(local_invocation_index) li: u32,
}

var<workgroup> mv_part: array<f32, 1024>; // MV_ROWS (at most 16) * WG

// Sums mv_acc[r] over the workgroup for each of the MV_ROWS rows; thread r (< MV_ROWS)
// gets row r's total, the others an unspecified value. Call from uniform control flow.
fn reduce_rows(l: Lanes) -> f32 {
    return reduce_values(l, MV_ROWS);
}

// reduce_rows for the first `count` (at most 16) values of mv_acc, each summed as
// reduce_rows sums a row (the multi-token kernel reduces several tokens' rows at once).
fn reduce_values(l: Lanes, count: u32) -> f32 {
    for (var r = 0u; r < count; r++) {
        mv_part[r * 64u + l.li] = mv_acc[r];
    }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (l.li < s) {
            for (var r = 0u; r < count; r++) {
                mv_part[r * 64u + l.li] += mv_part[r * 64u + l.li + s];
            }
        }
        workgroupBarrier();
    }
    var total = 0.0;
    if (l.li < count) {
        total = mv_part[l.li * 64u];
    }
    return total;
}

// The sum of v over the workgroup, returned to every thread. Call from uniform control flow.
fn reduce_all(v: f32, l: Lanes) -> f32 {
    mv_part[l.li] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (l.li < s) {
            mv_part[l.li] += mv_part[l.li + s];
        }
        workgroupBarrier();
    }
    let total = mv_part[0];
    workgroupBarrier();
    return total;
}
