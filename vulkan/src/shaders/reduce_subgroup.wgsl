// Workgroup sums with subgroup operations (wgpu `SUBGROUP`): one subgroupAdd per row, then
// one value per subgroup through workgroup memory. Prepended to the matmul module when the
// adapter has subgroups; reduce_shared.wgsl is the same interface without them. (Naga takes
// the subgroup built-ins once the device has the feature; it rejects `enable subgroups;`.)

struct Lanes {
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
}

// Room for MV_ROWS (at most 16) rows of one value per subgroup: at most 64 subgroups, which
// the host checks for the decode workgroups of MV_WG threads (MV_WG / the adapter's smallest
// subgroup size, see `Kernels::new`).
var<workgroup> mv_part: array<f32, 1024>;

// Sums mv_acc[r] over the workgroup for each of the MV_ROWS rows; thread r (< MV_ROWS)
// gets row r's total, the others an unspecified value. Call from uniform control flow.
fn reduce_rows(l: Lanes) -> f32 {
    return reduce_values(l, MV_ROWS);
}

// reduce_rows for the first `count` (at most 16) values of mv_acc, each summed as
// reduce_rows sums a row (the multi-token kernel reduces several tokens' rows at once).
fn reduce_values(l: Lanes, count: u32) -> f32 {
    for (var r = 0u; r < count; r++) {
        let s = subgroupAdd(mv_acc[r]);
        if (l.sid == 0u) {
            mv_part[r * 64u + l.sg] = s;
        }
    }
    workgroupBarrier();
    var total = 0.0;
    if (l.li < count) {
        for (var j = 0u; j < l.nsg; j++) {
            total += mv_part[l.li * 64u + j];
        }
    }
    return total;
}

// The sum of v over the workgroup, returned to every thread. Call from uniform control flow.
fn reduce_all(v: f32, l: Lanes) -> f32 {
    let s = subgroupAdd(v);
    if (l.sid == 0u) {
        mv_part[l.sg] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var j = 0u; j < l.nsg; j++) {
        total += mv_part[j];
    }
    workgroupBarrier();
    return total;
}
