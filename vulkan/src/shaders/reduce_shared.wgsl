// Workgroup sums through workgroup memory only (a tree with one barrier per level), for
// adapters without subgroup operations. Same interface as reduce_subgroup.wgsl. The
// workgroup has MV_WG threads (a multiple of 64, see matmul.wgsl): the rows' sums fold the
// threads past the first 64 into those 64 first, one slice of 64 threads at a time, so that
// mv_part holds 64 values per row whatever MV_WG (16 rows x MV_WG floats would take all of
// WebGPU's default 16 KiB of workgroup memory at 256 threads).

struct Lanes {
    @builtin(local_invocation_index) li: u32,
}

var<workgroup> mv_part: array<f32, 1024>; // MV_ROWS (at most 16) * 64

// Sums mv_acc[r] over the workgroup for each of the MV_ROWS rows; thread r (< MV_ROWS)
// gets row r's total, the others an unspecified value. Call from uniform control flow.
fn reduce_rows(l: Lanes) -> f32 {
    return reduce_values(l, MV_ROWS);
}

// reduce_rows for the first `count` (at most 16) values of mv_acc, each summed as
// reduce_rows sums a row (the multi-token kernel reduces several tokens' rows at once).
fn reduce_values(l: Lanes, count: u32) -> f32 {
    let slice = l.li / 64u;
    let lane = l.li % 64u;
    if (slice == 0u) {
        for (var r = 0u; r < count; r++) {
            mv_part[r * 64u + lane] = mv_acc[r];
        }
    }
    workgroupBarrier();
    for (var s = 1u; s < MV_WG / 64u; s++) {
        if (slice == s) {
            for (var r = 0u; r < count; r++) {
                mv_part[r * 64u + lane] += mv_acc[r];
            }
        }
        workgroupBarrier();
    }
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
    for (var s = MV_WG / 2u; s > 0u; s >>= 1u) {
        if (l.li < s) {
            mv_part[l.li] += mv_part[l.li + s];
        }
        workgroupBarrier();
    }
    let total = mv_part[0];
    workgroupBarrier();
    return total;
}
