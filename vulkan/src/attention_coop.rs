//! Prompt attention on cooperative matrices (`attention_coop`, attention_coop.wgsl; tuning key
//! `pattn=2`): its module for one head dimension, with the matrix operations on the matrix
//! cores or, for `prefill=coop-emulated`, in plain code (attention_coop_emulated.wgsl), and
//! whether a device and model can run it (else steps of prompt size run `attention_tiled`).

use crate::kernels::F16_PACK;

const KERNEL: &str = include_str!("shaders/attention_coop.wgsl");
const EMULATED: &str = include_str!("shaders/attention_coop_emulated.wgsl");
const X16: &str = include_str!("shaders/attention_coop_x16.wgsl");

/// Query rows (token, query head) of one `attention_coop` workgroup: 16 per subgroup, four
/// subgroups (`ROWS` in attention_coop.wgsl).
pub(crate) const ATTENTION_COOP_ROWS: usize = 64;
/// Positions per K/V tile (`BK` in attention_coop.wgsl).
const TILE_POSITIONS: usize = 32;
/// The largest head dimension: its Q and O take 2 x 16 cooperative matrices per subgroup, and
/// its workgroup memory about 47.5 KiB.
const MAX_HEAD_DIM: usize = 256;

/// Bytes of workgroup memory `attention_coop` takes at head dimension `head_dim` (see
/// attention_coop.wgsl): the K and V tiles and P in f16 with rows padded by 8 halves, S in
/// f32, four f32 or u32 values per row and the 128 threads' partial values.
pub(crate) fn workgroup_bytes(head_dim: usize) -> u64 {
    let kv = 2 * TILE_POSITIONS * (head_dim + 8) * 2;
    let p = ATTENTION_COOP_ROWS * (TILE_POSITIONS + 8) * 2;
    let s = ATTENTION_COOP_ROWS * TILE_POSITIONS * 4;
    let per_row = ATTENTION_COOP_ROWS * 4 * 4;
    (kv + p + s + per_row + 128 * 4) as u64
}

/// Why `attention_coop` cannot run a model of head dimension `head_dim` on a device with
/// `workgroup_limit` bytes of workgroup memory, or `None` where it can.
pub(crate) fn unsupported(head_dim: usize, workgroup_limit: u64) -> Option<String> {
    if head_dim == 0 || !head_dim.is_multiple_of(16) || head_dim > MAX_HEAD_DIM {
        return Some(format!(
            "its head dimension must be a multiple of 16 up to {MAX_HEAD_DIM}, and the model's is {head_dim}"
        ));
    }
    let bytes = workgroup_bytes(head_dim);
    (bytes > workgroup_limit).then(|| {
        format!(
            "at head dimension {head_dim} it needs {bytes} bytes of workgroup memory and the adapter allows {workgroup_limit}"
        )
    })
}

/// The module of `attention_coop` for head dimension `head_dim` (a multiple of 16): its
/// constant HD in front and the lines it leaves to the host (see [`matrix_lines`]);
/// `emulated`: with the cooperative-matrix operations done by the plain functions of
/// attention_coop_emulated.wgsl.
pub(crate) fn source(head_dim: usize, emulated: bool) -> String {
    let mut src = KERNEL.to_string();
    write_lines(&mut src, head_dim, emulated);
    module(&src, head_dim, emulated)
}

/// As [`source`], with the output written as the attention output product's f16 x
/// (attention_coop_x16.wgsl: `write_block_x16` instead of `write_block`; `x16fuse=1`).
pub(crate) fn source_x16(head_dim: usize, emulated: bool) -> String {
    let mut src = KERNEL.to_string();
    write_lines(&mut src, head_dim, emulated);
    // The calls (the definition reads `write_block(sg: u32`), which `$WRITES` wrote.
    let call = "write_block(sg,";
    assert!(src.contains(call), "attention_coop.wgsl: {call}");
    let src = src.replace(call, "write_block_x16(sg,");
    module(&format!("{src}\n{X16}\n{F16_PACK}"), head_dim, emulated)
}

/// Writes the host's lines into `src` (attention_coop.wgsl) for head dimension `head_dim`.
fn write_lines(src: &mut String, head_dim: usize, emulated: bool) {
    for (marker, text) in matrix_lines(head_dim / 16, emulated) {
        let count = if marker == "$SCORES" { 2 } else { 1 };
        assert_eq!(
            src.matches(marker).count(),
            count,
            "attention_coop.wgsl: {marker}"
        );
        *src = src.replace(marker, &text);
    }
}

/// The module of the kernel source `src` with its head dimension and enables in front and,
/// `emulated`, the plain matrix operations after it.
fn module(src: &str, head_dim: usize, emulated: bool) -> String {
    let head = format!("const HD: u32 = {head_dim}u;\n");
    if emulated {
        format!("enable f16;\n{head}{src}\n{EMULATED}")
    } else {
        format!("enable f16;\nenable wgpu_cooperative_matrix;\n{head}{src}")
    }
}

/// The kernel's matrix statements for `blocks` blocks of 16 dims, per marker of
/// attention_coop.wgsl. On cooperative matrices, one statement per matrix (`q<d>`, `o<d>`:
/// WGSL has no arrays of them that stay in registers). Emulated, the same offsets in loops
/// over the blocks, with the accumulators in an array, bounded by the head dimension of the
/// parameters (`p.hd`, equal to HD) so that the compiler does not unroll them (nor the
/// loops of the emulated operations, see `opaque` in attention_coop_emulated.wgsl):
/// unrolled, the plain code of every matrix operation took lavapipe's compiler many minutes
/// and gigabytes. Layouts: Q and P (A) and V
/// (B, position k and dim j at position k's row) row-major, K (B, dim k and position j at
/// position j's row) column-major; S stored column-major, O row-major.
fn matrix_lines(blocks: usize, emulated: bool) -> [(&'static str, String); 5] {
    let each = |f: &dyn Fn(usize) -> String, sep: &str| -> String {
        (0..blocks).map(f).collect::<Vec<_>>().join(sep)
    };
    if emulated {
        return [
            // The emulation reads Q from `q` when multiplying (see attention_coop_emulated.wgsl).
            ("$Q_LOADS", String::new()),
            (
                "$SCORES",
                "{
        var s0 = EmuAcc();
        var s1 = EmuAcc();
        for (var d = 0u; d < p.hd / 16u; d++) {
            s0 = emu_mul_qk(lane, tile, kvh, sg, d, 4u * d, s0);
            s1 = emu_mul_qk(lane, tile, kvh, sg, d, 16u * KSV + 4u * d, s1);
        }
        emu_store(lane, false, s0, sa);
        emu_store(lane, false, s1, sa + 256u);
        }"
                .into(),
            ),
            ("$O_INIT", "var o: array<EmuAcc, HD / 16u>;".into()),
            (
                "$PV",
                "for (var d = 0u; d < p.hd / 16u; d++) {
            o[d] = emu_mul_pv(lane, pa, VB + 4u * d, o[d]);
            o[d] = emu_mul_pv(lane, pa + 4u, VB + 16u * KSV + 4u * d, o[d]);
        }"
                .into(),
            ),
            (
                "$WRITES",
                "for (var d = 0u; d < p.hd / 16u; d++) {
        emu_store(lane, true, o[d], ob);
        workgroupBarrier();
        write_block(sg, lane, tile, kvh, d);
        workgroupBarrier();
    }"
                .into(),
            ),
        ];
    }
    let q_loads = each(
        &|d| {
            format!(
                "let q{d} = coopLoadT<coop_mat16x16<f16, A>>(&kv[qa + {}u], KSV);",
                4 * d
            )
        },
        "\n    ",
    );
    let scores = format!(
        "{{\n        var s0 = coop_mat16x16<f32, C>();\n        var s1 = coop_mat16x16<f32, C>();\n        {}\n        coopStore(s0, &st[sa], 16u);\n        coopStore(s1, &st[sa + 256u], 16u);\n        }}",
        each(&|d| format!(
            "s0 = coopMultiplyAdd(q{d}, coopLoad<coop_mat16x16<f16, B>>(&kv[{o}u], KSV), s0);\n        s1 = coopMultiplyAdd(q{d}, coopLoad<coop_mat16x16<f16, B>>(&kv[16u * KSV + {o}u], KSV), s1);",
            o = 4 * d
        ), "\n        ")
    );
    let o_init = each(
        &|d| format!("var o{d} = coop_mat16x16<f32, C>();"),
        "\n    ",
    );
    let pv = format!(
        "{{\n        let p0 = coopLoadT<coop_mat16x16<f16, A>>(&pt[pa], PSV);\n        let p1 = coopLoadT<coop_mat16x16<f16, A>>(&pt[pa + 4u], PSV);\n        {}\n        }}",
        each(&|d| format!(
            "o{d} = coopMultiplyAdd(p0, coopLoadT<coop_mat16x16<f16, B>>(&kv[VB + {o}u], KSV), o{d});\n        o{d} = coopMultiplyAdd(p1, coopLoadT<coop_mat16x16<f16, B>>(&kv[VB + 16u * KSV + {o}u], KSV), o{d});",
            o = 4 * d
        ), "\n        ")
    );
    let writes = each(
        &|d| {
            format!("coopStoreT(o{d}, &st[ob], 16u);\n    workgroupBarrier();\n    write_block(sg, lane, tile, kvh, {d}u);\n    workgroupBarrier();")
        },
        "\n    ",
    );
    [
        ("$Q_LOADS", q_loads),
        ("$SCORES", scores),
        ("$O_INIT", o_init),
        ("$PV", pv),
        ("$WRITES", writes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dimensions_and_workgroup_memory_are_checked() {
        // 31.5 KiB at head dimension 128, as attention_coop.wgsl says; 47.5 KiB at 256.
        assert_eq!(workgroup_bytes(128), 32256);
        assert!(unsupported(128, 32 * 1024).is_none());
        assert!(unsupported(64, 32 * 1024).is_none());
        assert!(unsupported(256, 48 * 1024).is_none());
        let err = unsupported(256, 32 * 1024).unwrap();
        assert!(err.contains("workgroup memory"), "{err}");
        for hd in [0, 8, 40, 72, 272] {
            let err = unsupported(hd, 1 << 20).unwrap();
            assert!(err.contains("multiple of 16"), "{hd}: {err}");
        }
    }

    #[test]
    fn every_matrix_line_is_written() {
        for emulated in [false, true] {
            let src = source(64, emulated);
            assert!(!src.contains('$'), "{src}");
        }
        // Four dim blocks: q0..q3 and o0..o3.
        let src = source(64, false);
        assert!(src.contains("let q3 =") && !src.contains("let q4 ="));
        assert!(src.contains("var o3 =") && !src.contains("var o4 ="));
    }

    /// The module that writes the output as f16 x (`x16fuse=1`) calls only
    /// `write_block_x16` and is valid WGSL for naga, on matrix cores as emulated (lavapipe's
    /// tests run only the emulation).
    #[test]
    fn the_f16_x_variant_is_valid_and_writes_only_x16() {
        use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags};
        for emulated in [false, true] {
            let src = source_x16(64, emulated);
            assert!(src.contains("write_block_x16(sg,") && !src.contains("write_block(sg,"));
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("emulated {emulated}: {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(ValidationFlags::all(), Capabilities::all())
                .subgroup_stages(ShaderStages::COMPUTE)
                .subgroup_operations(SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("emulated {emulated}: {}", e.emit_to_string(&src)));
        }
    }
}
