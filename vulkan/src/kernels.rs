//! WGSL compute kernels and their pipelines.
//!
//! The matrix kernels share one skeleton (`shaders/matmul.wgsl`) and differ only in the
//! `load_unit` function that dequantizes 32 weights of one type; the module for each type is
//! the workgroup-reduction functions (`reduce_subgroup.wgsl` when the device has subgroup
//! operations, else `reduce_shared.wgsl`), the skeleton, the multi-token matrix-vector entry
//! point (`matvec_multi.wgsl`, built on the skeleton's one-token functions), and that type's
//! function. A mixed
//! decode product (two matrices of different types side by side, one dispatch) appends a
//! second type's functions, renamed (`mixed_source`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::quant::WeightType;
use crate::{Gpu, VulkanError};

/// Threads per workgroup of every kernel (a multiple of every common subgroup size: 8, 16, 32, 64).
pub(crate) const WORKGROUP: u32 = 64;
/// Tokens one matmul workgroup handles (`TB` in matmul.wgsl).
pub(crate) const TOKENS_PER_GROUP: u32 = 8;
/// Rows and tokens of one tiled matmul workgroup (`TILE_ROWS`, `TILE_TOKENS` in matmul.wgsl).
pub(crate) const TILE_ROWS: u32 = 64;
pub(crate) const TILE_TOKENS: u32 = 32;
/// Prompt batches of at least this many tokens use the tiled product: below it most of a
/// tile's 32 token columns would be computed for nothing.
pub(crate) const TILED_MIN_TOKENS: u32 = 16;
/// Steps of at most this many tokens (a batched decode step of up to this many sequences)
/// run matrix-vector kernels: the multi-token one (`matvec_multi`), whose workgroups read
/// their rows once for up to MULTI_COLS tokens, where the batched and tiled products would
/// spread a few tokens over far fewer workgroups than the GPU has cores.
pub(crate) const MATVEC_MAX_TOKENS: u32 = 16;
/// Tokens one `matvec_multi` workgroup multiplies with its rows (`MV_COLS`, at most 8: see
/// matvec_multi.wgsl) and the rows it takes (4 or 8).
const MULTI_COLS: u32 = 8;
/// 4 rows: each thread holds its unit of every row in registers across the tokens (about 10
/// registers a row for the int8 types) next to 4 accumulators per row and token; 8 rows
/// would take about 165 registers a thread and halve the workgroups a core holds.
const MULTI_ROWS: u32 = 4;
/// Workgroups along x before a matmul dispatch wraps to y (`ROWS_PER_Y` in matmul.wgsl).
pub(crate) const ROWS_PER_Y: u32 = 32768;
/// The most workgroups of the grid-stride elementwise kernels but SiLU·mul (rope): more
/// threads than that walk several elements each.
pub(crate) const ELEMENTWISE_GROUPS: u32 = 1024;
/// The most workgroups a dispatch may have along x (Vulkan's minimum of
/// maxComputeWorkGroupCount, which wgpu's default limits keep).
const MAX_GROUPS_X: usize = 65535;
/// The most workgroups of SiLU·mul (`silug=`): one thread per element up to 4M elements. On
/// an H100 (8B, 512-token prompt, 7.3M elements a layer) it took 50.9 us with 65535
/// workgroups and 80.9 with 1024; RoPE, with few elements per thread, was slower with more
/// (25.1 against 19.3 us) and keeps ELEMENTWISE_GROUPS.
const SILU_GROUPS: u32 = MAX_GROUPS_X as u32;
/// `coopmin=` by default: about two workgroups per core of a 132-core GPU. On an H100 the
/// 1B Q4_0 file's 512-token prompt ran 30585 tok/s with 264 (the 2048-row products on
/// 128 x 64 or 64 x 64 tiles), 28574-28763 with one tile; the 8B Q4_K_M file's 6693 with
/// 256 and the register prefetch against 6513 with the prefetch alone.
const COOP_MIN_GROUPS: u32 = 256;
/// Rows one matrix-vector (decode) workgroup computes (`MV_ROWS` in matmul.wgsl): 4, or 16
/// for tall matrices, where the x reads of small workgroups would cost more than the weights
/// (see matmul.wgsl): by default those of at least TALL_MATVEC_ROWS rows (`tall=` sets
/// another count). On an H100 with the 8B files, 6144 (q|k|v and gate|up tall, attn_output
/// and ffn_down of 4096 rows in 4-row workgroups) against 4096 (every matrix tall): Q4_K_M
/// 223.5 against 196.0-198.9 tok/s (its ffn_down 52.5 us a layer tall against 34.7),
/// Q4_0 262.2 and 261.8 against 253.1 and 255.4, Q8_0 199.3 and 202.0 against 189.0 and 186.0;
/// 8192 (only gate|up and the output head tall) was slower on all three (Q4_0 236-239,
/// Q8_0 188.8 and 188.1). The 1B files (3072 rows and fewer but for gate|up and the output
/// head) run the same workgroups with 4096 and 6144.
pub(crate) const MATVEC_ROWS: u32 = 4;
pub(crate) const TALL_MATVEC_ROWS_PER_GROUP: u32 = 16;
pub(crate) const TALL_MATVEC_ROWS: usize = 6144;
/// Threads of a decode workgroup (`MV_WG` in matmul.wgsl): the 4-row workgroups always have
/// WORKGROUP; the tall ones have what `mvwg=` asks for (see [`MatvecThreads`]), by default
/// `auto`.
pub(crate) const MATVEC_THREADS: [u32; 3] = [64, 128, 256];
/// The most threads `mvwg=auto` gives a tall decode workgroup: on an H100 (8B Q4_0) 256
/// threads for the products of 14336-wide rows (ffn_down) were no faster than 128 (260.8
/// against 262.5 tok/s), and on the Q4_K_M file's ffn_down slower (39.0 against 34.7 us).
const MATVEC_AUTO_MAX_THREADS: u32 = 128;
/// The most subgroups a decode workgroup may have: reduce_subgroup.wgsl keeps one value per
/// subgroup and row in 16 rows x 64 floats of workgroup memory.
const MATVEC_MAX_SUBGROUPS: u32 = 64;
/// Layers per submission after the first one of a forward pass (the first has
/// FIRST_SUBMIT_LAYERS, so that the GPU starts early).
pub(crate) const SUBMIT_LAYERS: usize = 16;
pub(crate) const FIRST_SUBMIT_LAYERS: usize = 4;
/// Whether the Q8_0, Q4_0 and K-quant (Q4_K, Q5_K, Q6_K) decode products quantize x to int8
/// and use integer dot products (`MV_DP4A` in matmul.wgsl).
const DP4A: bool = true;
/// Attention workgroups a step aims for: fewer leave a large GPU idle during attention.
pub(crate) const ATTENTION_TARGET_GROUPS: usize = 1024;
/// The most query heads per K/V head that `attention_grouped` takes in one workgroup (its
/// running outputs, one vec4 per head and thread, are kept in registers); models with
/// larger groups run `attention`.
pub(crate) const MAX_ATTENTION_GROUP: usize = 8;
/// Threads per `attention_vec` workgroup that `dwg=` may ask for.
pub(crate) const VEC_ATTENTION_THREADS: [usize; 5] = [64, 128, 256, 512, 1024];

/// Threads of the tall decode workgroups (`mvwg=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatvecThreads {
    /// One of MATVEC_THREADS for every tall matrix.
    Fixed(u32),
    /// By row length (see [`MatvecThreads::for_k`]).
    Auto,
}

impl MatvecThreads {
    /// Threads of a tall decode workgroup whose rows have `k` weights. `Auto`: the most of
    /// MATVEC_THREADS up to MATVEC_AUTO_MAX_THREADS that still gives every thread at least
    /// one 32-weight unit: 128 from k = 4096 (128 units), 64 below.
    pub(crate) fn for_k(self, k: usize) -> u32 {
        match self {
            MatvecThreads::Fixed(n) => n,
            MatvecThreads::Auto => Self::auto_counts()
                .filter(|&n| n as usize * 32 <= k)
                .max()
                .unwrap_or(WORKGROUP),
        }
    }

    fn auto_counts() -> impl Iterator<Item = u32> {
        MATVEC_THREADS
            .into_iter()
            .filter(|&n| n <= MATVEC_AUTO_MAX_THREADS)
    }

    /// The thread counts the tall pipelines are compiled for.
    fn all(self) -> Vec<u32> {
        match self {
            MatvecThreads::Fixed(n) => vec![n],
            MatvecThreads::Auto => Self::auto_counts().collect(),
        }
    }
}

/// The workgroup of a decode product: rows (`MV_ROWS`) and threads (`MV_WG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MatvecGroup {
    pub rows: u32,
    pub threads: u32,
}

fn dp4a_type(ty: WeightType) -> bool {
    matches!(
        ty,
        WeightType::Q8_0 | WeightType::Q4_0 | WeightType::Q4K | WeightType::Q5K | WeightType::Q6K
    )
}

/// The product of prompt batches of at least TILED_MIN_TOKENS tokens (`prefill=` in
/// [`KernelTuning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    /// `Coop` where the device offers a matching cooperative-matrix configuration (see
    /// `Gpu::cooperative_prefill`), else `Tiled`: the default.
    Auto,
    /// `matmul_coop` (matrix cores, f16 operands, f32 sums); opening a device without a
    /// matching configuration fails.
    Coop,
    /// `matmul_tiled` (f32 FMA tiles in workgroup memory).
    Tiled,
    /// `matmul` for every prompt batch, one row per workgroup.
    Rows,
    /// `matmul_coop` with its cooperative-matrix operations done by plain code in each
    /// thread (coop_emulated.wgsl), with the same f16 operands and f32 sums: slow, for testing
    /// the kernel and the engine's numerics with it on adapters without cooperative matrices.
    CoopEmulated,
}

/// Environment variable that the binaries (the runner, the benchmark example, the tests)
/// read into [`KernelTuning`]; the library itself never reads it.
pub const MATVEC_TUNING_ENV: &str = "XPU_VULKAN_MATVEC";

/// Kernel settings, for benchmarks on a GPU host; the default is what the engine runs.
///
/// Written as comma-separated `key=value` items, e.g. `units=1,tall=2048`: `units=1|2`
/// (32-weight units each thread takes per loop iteration, `MV_UNITS` in matmul.wgsl),
/// `tall=N` (the row count from which a matrix counts as tall), `checks=0|1` (1: compile
/// every kernel with wgpu's runtime checks, to measure what they cost), `submit=N` (layers
/// per submission after the first one, see `LlamaModel::record_pass`), `dp4a=0|1` (Q8_0,
/// Q4_0 and K-quant decode products with int8 activations and integer dot products, `MV_DP4A` in
/// matmul.wgsl), `attn=N` (attention workgroups a step aims for, see `attention_split` in
/// model.rs), `chunks=1..128` (the most chunks of positions per query head and token of
/// decode attention, ATTENTION_MAX_CHUNKS by default; more chunks are shorter but cost
/// `combine` more partial results), `chunklen=N` (at least N positions per chunk: short
/// sequences get fewer chunks, one and no `combine` below 2N; 0: no minimum), `silug=N` (the
/// most workgroups of the grid-stride SiLU·mul kernel of prompt batches, up to 65535, by
/// default all of them: more elements than 64 per workgroup are walked by each thread in turn), `prefill=coop|tiled|rows` (prompt batches of at least TILED_MIN_TOKENS tokens
/// with the cooperative-matrix product `matmul_coop`, which the device must offer (see
/// [`Prefill`]), with the tiled product `matmul_tiled`, or every prompt batch with `matmul`,
/// one row per workgroup; unset: `coop` where the device offers it, else `tiled`;
/// `coop-emulated`: `matmul_coop` without matrix cores, for tests), `batch=N` (steps of at most N tokens, such as a batched decode step of N
/// sequences, run matrix-vector kernels; 1: only one-token steps do), `multi=0|1` (1: those
/// steps run the multi-token kernel `matvec_multi`, which reads each weight once per
/// `cols` tokens; 0: the one-token kernel once per token, z slices), `cols=1..8` (tokens
/// per `matvec_multi` workgroup), `mrows=4|8` (rows per `matvec_multi` workgroup) and
/// `xq=0|1` (1: where `matvec_multi` takes int8 x, the step's x is quantized once by its own
/// dispatch, `quantize_x`; 0: every workgroup quantizes the x it reads), `fuseq=0|1` (1:
/// where the products after an RMSNorm or SiLU·mul read that int8 x, a multi-token step
/// computes the norm or SiLU·mul and the quantization in one dispatch, `norm_quantize_x` or
/// `glu_quantize_x`, instead of two), `headq=0|1` (1: the output head of a step with
/// several logit rows, such as a batched decode step, reads int8 x where its weight type has
/// int8 products, as the other products of such a step do; a one-token step's head keeps f32
/// x; 0: every head reads f32 x), `coopk=1|2|4` (32-weight units of k that
/// `matmul_coop` stages per pair of barriers), `coopvec=2|4` (halves per element of its
/// staged tiles: each thread stores four values as two vec2 or one vec4), `coopx16=0|1` (1:
/// each product first converts its x to f16 once, `coop_x_f16`, and the tiles stage that
/// copy; 0: every tile converts the f32 x it stages), `x16fuse=0|1` (1: with `coopx16=1`, the
/// RMSNorm before the q|k|v and gate|up products and the SiLU·mul before the down product of
/// a prompt step write that f16 copy themselves, `x16_out.wgsl`, instead of their f32 output,
/// as does `attention_coop` before the attention output product (attention_coop_x16.wgsl),
/// and those products run without `coop_x_f16`, the default; 0: every product converts its
/// x) and `cooptile=64|128|<rows>x<tokens>` (rows 64
/// or 128 by tokens 32, 64 or 128 per `matmul_coop` workgroup; a lone number is that many
/// rows by 64 tokens; see [`CoopShape`]), `coopsg=4|8` (subgroups per `matmul_coop`
/// workgroup: two across the rows, the others across the tokens; 8 needs tiles of at least
/// 64 tokens), `coopbuf=1|2` (buffers of its staged tiles: with 2, the next stage is
/// staged while the current one is multiplied, one barrier per stage), `coopmin=N` (a prompt
/// product whose grid with that tile would have fewer than N workgroups runs the next smaller
/// tile that fits, down to 64 x 64; default COOP_MIN_GROUPS; 0: always the one tile; see
/// [`KernelTuning::coop_ladder`]), `coopfetch=0|1` (1, the default: the loads of the next
/// stage go to registers before the current stage's products and are decoded into the
/// staged tiles after them, so that they are in flight during the products; 0: each stage
/// is loaded and decoded before the products) and `pattn=0|1|2` (1: steps of prompt
/// size, as the prompt products count them, but for steps of one token per sequence, run
/// attention with query tiles,
/// `attention_tiled` in attention_tiled.wgsl; 2, the default: those steps run `attention_coop`
/// (attention_coop.wgsl), the same query tiles with S = Q K^T and O = P V on cooperative
/// matrices, where the prompt products run on them (`prefill` unset or `coop`; with
/// `prefill=coop-emulated`, its emulation), the head dimension is a multiple of 16 up to 256
/// and its workgroup memory fits the adapter's, else `attention_tiled`; 0: with the decode
/// kernel `attention`, one workgroup per head and token; see
/// [`KernelTuning::tiled_attention_for`]) and `gqa=0|1`
/// (1: decode and batched-decode steps run `attention_grouped` in attention_grouped.wgsl, one
/// workgroup per K/V head, token and chunk, which loads each K/V row once for all the query
/// heads that share it (at most MAX_ATTENTION_GROUP of them); 0, the default: `attention`,
/// one workgroup per query head, token and chunk, which an H100 ran 2 % faster at depth 512
/// of an 8B file (1 % slower at 4096); see
/// [`KernelTuning::grouped_attention_for`]) and `dattn=0|1` (1: those steps run
/// `attention_vec` in attention_vec.wgsl instead, whose threads each own one vec4 of the
/// head for K as for V, so that a subgroup's loads read consecutive bytes of one K row,
/// and which loads the next tile's K/V ahead; one workgroup per query head (`gqa=0`) or
/// per K/V head (`gqa=1`); the default: on an H100 it decoded an 8B file 3 % faster at
/// depth 512 and 8 % faster at 4096 than `attention`; 0: `attention` or `attention_grouped`) and
/// `dwg=64|128|256|512|1024` (threads per `attention_vec` workgroup, default 64: more take
/// more positions per tile, tiles of up to half as many positions as threads; at most what
/// the adapter's workgroup size and memory allow for the heads of a workgroup, see
/// `attention_vec_threads`).
/// `mvwg=64|128|256|auto`: threads of the tall decode workgroups (16 rows, `MV_WG` in
/// matmul.wgsl; the 4-row ones keep 64): more threads read and quantize x once per 16 rows
/// with as many warps as four 4-row workgroups, each taking fewer units of k; `auto`, the
/// default, picks by row length (see `MatvecThreads::for_k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelTuning {
    units: u32,
    /// `tall=`: one row count for every type; None, the default, by type (see
    /// [`Kernels::matvec_group`]).
    tall_rows: Option<usize>,
    checks: bool,
    submit_layers: usize,
    dp4a: bool,
    attn_groups: usize,
    attn_max_chunks: usize,
    /// `chunklen=`: the fewest positions per chunk of decode attention (0: no minimum).
    attn_min_chunk_len: usize,
    /// `silug=`: the most workgroups of SiLU·mul.
    silu_groups: u32,
    prefill: Prefill,
    matvec_tokens: u32,
    multi: bool,
    multi_cols: u32,
    multi_rows: u32,
    quantize_once: bool,
    fused_quantize: bool,
    head_int8: bool,
    coop: CoopShape,
    /// `x16fuse=`: the kernels before prompt products write their f16 x (see
    /// [`Kernels::x16_producer`]).
    x16_fuse: bool,
    /// Whether `cooptile=`, `coopsg=` or `coopbuf=` was given: if not, the device picks the
    /// tile for its workgroup memory (see [`KernelTuning::with_coop_tile_for`]).
    coop_tile_given: bool,
    /// `coopmin=`: a prompt product whose grid with the tile above would have fewer
    /// workgroups than this runs a smaller tile (see [`KernelTuning::coop_ladder`]); 0: never.
    coop_min_groups: u32,
    /// `pattn=`: 0 (decode kernel), 1 (`attention_tiled`) or 2 (`attention_coop`).
    prompt_attention: u8,
    grouped_attention: bool,
    vec_attention: bool,
    vec_threads: usize,
    /// `mvwg=`: threads of the tall decode workgroups.
    tall_threads: MatvecThreads,
}

/// The tile of one `matmul_coop` workgroup (`cooptile=`, `coopk=`, `coopvec=`, `coopx16=`,
/// `coopfetch=`; see matmul_coop.wgsl): `rows` x `tokens` of the output, k staged `units`
/// 32-weight units at a time into tiles of `vec`-half vectors, x staged from its f16 copy
/// where `x16`, the next stage prefetched into registers where `fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CoopShape {
    pub rows: u32,
    pub tokens: u32,
    pub units: u32,
    pub vec: u32,
    pub x16: bool,
    /// Subgroups per workgroup (`coopsg=4|8`): two across the rows, the rest across the
    /// tokens.
    pub subgroups: u32,
    /// Buffers of the staged tiles (`coopbuf=1|2`): with two, one stage is staged while the
    /// previous one is multiplied (see matmul_coop.wgsl).
    pub buffers: u32,
    /// Whether the next stage's loads go to registers before the current stage's products
    /// (`coopfetch=0|1`, see matmul_coop.wgsl).
    pub fetch: bool,
}

impl CoopShape {
    /// 64 x 64, one unit per stage: 14 KiB of workgroup memory, within WebGPU's default.
    pub const DEFAULT: CoopShape = CoopShape {
        rows: 64,
        tokens: 64,
        units: 1,
        vec: 4,
        x16: true,
        subgroups: 4,
        buffers: 1,
        fetch: true,
    };

    /// The tiles a device runs where none of `cooptile=`, `coopsg=` and `coopbuf=` is
    /// given, best first, as (rows, tokens, subgroups, buffers): the first that the adapter's
    /// workgroup memory holds, else [`DEFAULT`](Self::DEFAULT). On an H100 (8B Q4_K_M,
    /// pp512) 128 x 128 with eight subgroups and two buffers (48 KiB) ran 4935 tok/s,
    /// 128 x 64 with four subgroups and one buffer (19 KiB) 4455, 64 x 64 3559: taller tiles
    /// read x fewer times, wider ones dequantize each weight for more tokens.
    pub const AUTO: [(u32, u32, u32, u32); 2] = [(128, 128, 8, 2), (128, 64, 4, 1)];

    /// Bytes of workgroup memory the kernel declares: the f16 tiles of weights and x, rows
    /// of 32 units + 8 halves, and one f32 16x16 matrix per subgroup (see matmul_coop.wgsl).
    pub fn workgroup_bytes(&self) -> u64 {
        let stride = 32 * self.units as u64 + 8;
        2 * (self.rows + self.tokens) as u64 * stride * self.buffers as u64
            + 4 * 256 * self.subgroups as u64
    }

    /// The tuning keys that ask for this shape.
    pub fn setting(&self) -> String {
        format!(
            "cooptile={}x{},coopk={},coopvec={},coopx16={},coopsg={},coopbuf={},coopfetch={}",
            self.rows,
            self.tokens,
            self.units,
            self.vec,
            self.x16 as u32,
            self.subgroups,
            self.buffers,
            self.fetch as u32
        )
    }

    /// Tokens of the tile each subgroup multiplies: the tile's tokens over the subgroups
    /// across them (see matmul_coop.wgsl).
    fn subgroup_tokens(&self) -> u32 {
        self.tokens / (self.subgroups / 2)
    }

    /// `(rows, tokens)` of a `cooptile=` value: `R` (R x 64) or `RxT`.
    fn parse_tile(value: &str) -> Option<(u32, u32)> {
        let (rows, tokens) = match value.split_once('x') {
            Some((r, t)) => (r.trim().parse().ok()?, t.trim().parse().ok()?),
            None => (value.parse().ok()?, 64),
        };
        (matches!(rows, 64 | 128) && matches!(tokens, 32 | 64 | 128)).then_some((rows, tokens))
    }
}

impl Default for KernelTuning {
    fn default() -> Self {
        KernelTuning::DEFAULT
    }
}

impl KernelTuning {
    const DEFAULT: KernelTuning = KernelTuning {
        units: 1,
        tall_rows: None,
        checks: false,
        submit_layers: SUBMIT_LAYERS,
        dp4a: DP4A,
        attn_groups: ATTENTION_TARGET_GROUPS,
        attn_max_chunks: crate::model::ATTENTION_MAX_CHUNKS,
        attn_min_chunk_len: 0,
        silu_groups: SILU_GROUPS,
        prefill: Prefill::Auto,
        matvec_tokens: MATVEC_MAX_TOKENS,
        multi: true,
        multi_cols: MULTI_COLS,
        multi_rows: MULTI_ROWS,
        quantize_once: true,
        fused_quantize: true,
        head_int8: true,
        coop: CoopShape::DEFAULT,
        x16_fuse: true,
        coop_tile_given: false,
        coop_min_groups: COOP_MIN_GROUPS,
        prompt_attention: 2,
        grouped_attention: false,
        vec_attention: true,
        vec_threads: 64,
        tall_threads: MatvecThreads::Auto,
    };

    /// Attention workgroups a step aims for (`attn=`): sets how many chunks of positions
    /// attention splits into, and so the size of the partial-results buffer.
    pub(crate) fn attention_groups(&self) -> usize {
        self.attn_groups
    }

    /// The most chunks of positions per (head, token) of decode attention (`chunks=`).
    pub(crate) fn attention_max_chunks(&self) -> usize {
        self.attn_max_chunks
    }

    /// Workgroups of SiLU·mul over `total` elements: one per 64 of them up to `silug=`, at
    /// least one.
    pub fn silu_groups(&self, total: usize) -> u32 {
        (total.div_ceil(WORKGROUP as usize) as u32).clamp(1, self.silu_groups)
    }

    /// See [`Kernels::attention_max_chunks_for`].
    pub fn attention_max_chunks_for(&self, len: usize) -> usize {
        match self.attn_min_chunk_len {
            0 => self.attn_max_chunks,
            min_len => (len / min_len).clamp(1, self.attn_max_chunks),
        }
    }

    /// These settings with int8 activations in the decode products on or off (`dp4a`).
    pub fn with_dp4a(self, dp4a: bool) -> KernelTuning {
        KernelTuning { dp4a, ..self }
    }

    /// Whether the decode products of `ty` quantize x to int8 per 32 values (see `MV_DP4A`
    /// in matmul.wgsl); for tests, whose reference must do the same.
    pub fn decode_quantizes_x(&self, ty: WeightType) -> bool {
        self.dp4a && dp4a_type(ty)
    }

    /// The prompt-batch product asked for (`prefill=`).
    pub fn prefill(&self) -> Prefill {
        self.prefill
    }

    /// The tile of `matmul_coop` (`cooptile=`, `coopk=`).
    pub(crate) fn coop_shape(&self) -> CoopShape {
        self.coop
    }

    /// These settings with the `matmul_coop` tile a device with `workgroup_limit` bytes of
    /// workgroup memory runs: without `cooptile=`, `coopsg=` or `coopbuf=`, the first of
    /// CoopShape::AUTO that fits (with the other keys' values), else the default 64 x 64,
    /// which fits WebGPU's default 16 KiB.
    pub(crate) fn with_coop_tile_for(self, workgroup_limit: u64) -> KernelTuning {
        if self.coop_tile_given {
            return self;
        }
        let fitting = CoopShape::AUTO
            .iter()
            .map(|&(rows, tokens, subgroups, buffers)| CoopShape {
                rows,
                tokens,
                subgroups,
                buffers,
                ..self.coop
            })
            .find(|shape| shape.workgroup_bytes() <= workgroup_limit);
        KernelTuning {
            coop: fitting.unwrap_or(self.coop),
            ..self
        }
    }

    /// The `matmul_coop` tiles a device compiles, largest first: the tile above, then, with
    /// `coopmin=` set, each smaller one of CoopShape::AUTO and the default 64 x 64 (with the
    /// other keys' stage, vectors and x) that the adapter's workgroup memory holds. A prompt
    /// product runs the first whose grid has at least `coopmin` workgroups, else the last
    /// (`TiledShapes::pick` in quant.rs): a product of few rows (the attention output of a 1B model: 2048 rows)
    /// gets 16 workgroups of 128 x 128 per 128 tokens, too few to fill a GPU of 100 or more
    /// cores, and four times as many of 64 x 64.
    pub(crate) fn coop_ladder(&self, workgroup_limit: u64) -> Vec<CoopShape> {
        let mut ladder = vec![self.coop];
        if self.coop_min_groups == 0 {
            return ladder;
        }
        let default = &CoopShape::DEFAULT;
        let smaller = CoopShape::AUTO.iter().copied().chain([(
            default.rows,
            default.tokens,
            default.subgroups,
            default.buffers,
        )]);
        for (rows, tokens, subgroups, buffers) in smaller {
            let shape = CoopShape {
                rows,
                tokens,
                subgroups,
                buffers,
                ..self.coop
            };
            let smallest = ladder[ladder.len() - 1];
            if rows * tokens < smallest.rows * smallest.tokens
                && shape.workgroup_bytes() <= workgroup_limit
            {
                ladder.push(shape);
            }
        }
        ladder
    }

    /// The tile keys as the device describes its prompt product, with the smaller tiles of
    /// `coopmin=` where there are any (`...,coopmin=256 (then 128x64, 64x64)`).
    pub(crate) fn coop_setting(&self, workgroup_limit: u64) -> String {
        let ladder = self.coop_ladder(workgroup_limit);
        let mut setting = self.coop.setting();
        if ladder.len() > 1 {
            let smaller: Vec<String> = ladder[1..]
                .iter()
                .map(|s| format!("{}x{}", s.rows, s.tokens))
                .collect();
            setting += &format!(
                ",coopmin={} (then {})",
                self.coop_min_groups,
                smaller.join(", ")
            );
        }
        setting
    }

    /// The fewest rows from which a decode product runs tall workgroups: `tall=` where given,
    /// else TALL_MATVEC_ROWS.
    pub(crate) fn tall_rows(&self) -> usize {
        self.tall_rows.unwrap_or(TALL_MATVEC_ROWS)
    }

    /// `coopmin=` (see [`coop_ladder`](Self::coop_ladder)).
    pub(crate) fn coop_min_groups(&self) -> u32 {
        self.coop_min_groups
    }

    /// Whether a product of `n_tokens` tokens runs the prompt product of many tokens
    /// (`matmul_coop` or `matmul_tiled`, see `prefill=`); for tests, whose tolerance depends
    /// on it where that product has f16 operands (`Gpu::uses_cooperative_prefill`).
    pub fn tiled_kernel_for(&self, n_tokens: usize) -> bool {
        !self.decode_kernel_for(n_tokens)
            && n_tokens >= TILED_MIN_TOKENS as usize
            && self.prefill != Prefill::Rows
    }

    /// Whether a step of `n_tokens` tokens of `sequences` sequences runs attention with query
    /// tiles (`attention_tiled`, `pattn=1`): steps of prompt size, as the prompt products
    /// count them, in which some sequence has several tokens. Decode and batched-decode steps
    /// (one token per sequence, however many sequences) keep `attention`: their query tiles
    /// would hold one token each, and the decode kernel spreads each token's heads (and
    /// positions, for few tokens) over more workgroups.
    pub fn tiled_attention_for(&self, n_tokens: usize, sequences: usize) -> bool {
        self.prompt_attention != 0
            && !self.decode_kernel_for(n_tokens)
            && n_tokens >= TILED_MIN_TOKENS as usize
            && sequences < n_tokens
    }

    /// Whether the steps that run attention with query tiles ask for `attention_coop`
    /// (`pattn=2`); the device and model may still run `attention_tiled` instead (see
    /// [`Kernels::attention_coop`]).
    pub fn coop_attention(&self) -> bool {
        self.prompt_attention == 2
    }

    /// Whether the decode attention (steps that do not run `attention_tiled`) of a model with
    /// `n_head` query heads over `n_kv` K/V heads runs `attention_grouped` (`gqa=1`), one
    /// workgroup per K/V head; else `attention`, one per query head.
    pub fn grouped_attention_for(&self, n_head: usize, n_kv: usize) -> bool {
        self.grouped_attention
            && n_kv > 0
            && n_head.is_multiple_of(n_kv)
            && n_head / n_kv <= MAX_ATTENTION_GROUP
    }

    /// Whether decode attention runs `attention_vec` (`dattn=1`): with the grid of
    /// `attention_grouped` where [`grouped_attention_for`](Self::grouped_attention_for)
    /// says, else with that of `attention`.
    pub fn vec_attention(&self) -> bool {
        self.vec_attention
    }

    /// Threads per `attention_vec` workgroup asked for (`dwg=`; see
    /// [`attention_vec_threads`](crate::model::attention_vec_threads) for what a model gets).
    pub fn vec_attention_threads(&self) -> usize {
        self.vec_threads
    }

    /// These settings with `attention_vec` on or off (`dattn`).
    pub fn with_vec_attention(self, vec_attention: bool) -> KernelTuning {
        KernelTuning {
            vec_attention,
            ..self
        }
    }

    /// These settings with the grouped decode attention on or off (`gqa`).
    pub fn with_grouped_attention(self, grouped_attention: bool) -> KernelTuning {
        KernelTuning {
            grouped_attention,
            ..self
        }
    }

    /// Whether a product of `n_tokens` tokens runs the decode (matrix-vector) kernel, and so
    /// quantizes x where [`decode_quantizes_x`](Self::decode_quantizes_x) says; for tests.
    pub fn decode_kernel_for(&self, n_tokens: usize) -> bool {
        n_tokens <= self.matvec_tokens as usize
    }
}

impl std::str::FromStr for KernelTuning {
    type Err = String;

    /// Reads the `key=value,...` form described on [`KernelTuning`]; unset keys keep
    /// their defaults.
    fn from_str(spec: &str) -> Result<KernelTuning, String> {
        let mut t = KernelTuning::DEFAULT;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || {
                format!(
                    "cannot read the kernel setting {item:?}; expected units=1|2, tall=<rows>, checks=0|1, submit=<layers>, dp4a=0|1, attn=<workgroups>, chunks=1..128, chunklen=<positions>, silug=1..65535, prefill=coop|tiled|rows|coop-emulated, batch=<tokens>, multi=0|1, cols=1..8, mrows=4|8, xq=0|1, fuseq=0|1, headq=0|1, coopk=1|2|4, coopvec=2|4, coopx16=0|1, x16fuse=0|1, coopsg=4|8, coopbuf=1|2, coopfetch=0|1, cooptile=64|128|<rows>x<tokens> (rows 64|128, tokens 32|64|128), coopmin=<workgroups>, pattn=0|1|2, gqa=0|1, dattn=0|1, dwg=64|128|256|512|1024 and/or mvwg=64|128|256|auto, e.g. units=1,tall=2048"
                )
            };
            let (key, value) = item.split_once('=').ok_or_else(bad)?;
            let value = value.trim();
            match (key.trim(), value.parse::<usize>()) {
                ("units", Ok(n @ (1 | 2))) => t.units = n as u32,
                ("tall", Ok(n)) if n > 0 => t.tall_rows = Some(n),
                ("checks", Ok(n @ (0 | 1))) => t.checks = n == 1,
                ("submit", Ok(n)) if n > 0 => t.submit_layers = n,
                ("dp4a", Ok(n @ (0 | 1))) => t.dp4a = n == 1,
                ("attn", Ok(n)) if n > 0 => t.attn_groups = n,
                ("chunks", Ok(n @ 1..=crate::model::ATTENTION_CHUNKS_LIMIT)) => {
                    t.attn_max_chunks = n
                }
                ("chunklen", Ok(n)) => t.attn_min_chunk_len = n,
                ("silug", Ok(n @ 1..=MAX_GROUPS_X)) => t.silu_groups = n as u32,
                ("prefill", _) if value == "coop" => t.prefill = Prefill::Coop,
                ("prefill", _) if value == "tiled" => t.prefill = Prefill::Tiled,
                ("prefill", _) if value == "rows" => t.prefill = Prefill::Rows,
                ("prefill", _) if value == "coop-emulated" => t.prefill = Prefill::CoopEmulated,
                ("batch", Ok(n)) if n > 0 => t.matvec_tokens = n as u32,
                ("multi", Ok(n @ (0 | 1))) => t.multi = n == 1,
                ("cols", Ok(n @ 1..=8)) => t.multi_cols = n as u32,
                ("mrows", Ok(n @ (4 | 8))) => t.multi_rows = n as u32,
                ("xq", Ok(n @ (0 | 1))) => t.quantize_once = n == 1,
                ("fuseq", Ok(n @ (0 | 1))) => t.fused_quantize = n == 1,
                ("headq", Ok(n @ (0 | 1))) => t.head_int8 = n == 1,
                ("coopk", Ok(n @ (1 | 2 | 4))) => t.coop.units = n as u32,
                ("pattn", Ok(n @ (0..=2))) => t.prompt_attention = n as u8,
                ("coopvec", Ok(n @ (2 | 4))) => t.coop.vec = n as u32,
                ("coopx16", Ok(n @ (0 | 1))) => t.coop.x16 = n == 1,
                ("x16fuse", Ok(n @ (0 | 1))) => t.x16_fuse = n == 1,
                ("coopsg", Ok(n @ (4 | 8))) => {
                    t.coop.subgroups = n as u32;
                    t.coop_tile_given = true
                }
                ("coopbuf", Ok(n @ (1 | 2))) => {
                    t.coop.buffers = n as u32;
                    t.coop_tile_given = true
                }
                ("coopmin", Ok(n)) => t.coop_min_groups = u32::try_from(n).map_err(|_| bad())?,
                ("coopfetch", Ok(n @ (0 | 1))) => t.coop.fetch = n == 1,
                ("gqa", Ok(n @ (0 | 1))) => t.grouped_attention = n == 1,
                ("dattn", Ok(n @ (0 | 1))) => t.vec_attention = n == 1,
                ("dwg", Ok(n @ (64 | 128 | 256 | 512 | 1024))) => t.vec_threads = n,
                ("mvwg", Ok(n @ (64 | 128 | 256))) => {
                    t.tall_threads = MatvecThreads::Fixed(n as u32)
                }
                ("mvwg", _) if value == "auto" => t.tall_threads = MatvecThreads::Auto,
                ("cooptile", _) => {
                    (t.coop.rows, t.coop.tokens) = CoopShape::parse_tile(value).ok_or_else(bad)?;
                    t.coop_tile_given = true
                }
                _ => return Err(bad()),
            }
        }
        // Each subgroup multiplies at least one 16-token block.
        if t.coop.subgroup_tokens() < 16 {
            return Err(format!(
                "coopsg={} needs tiles of at least {} tokens, and cooptile gives {}: ask for cooptile=<rows>x{} or coopsg=4",
                t.coop.subgroups,
                8 * t.coop.subgroups,
                t.coop.tokens,
                8 * t.coop.subgroups
            ));
        }
        Ok(t)
    }
}

const MATMUL: &str = include_str!("shaders/matmul.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("shaders/reduce_subgroup.wgsl");
const REDUCE_SHARED: &str = include_str!("shaders/reduce_shared.wgsl");
const ELEMENTWISE: &str = include_str!("shaders/elementwise.wgsl");
const SINGLE_TYPE: &str = include_str!("shaders/single_type.wgsl");
const MIXED: &str = include_str!("shaders/mixed.wgsl");
const MATVEC_MULTI: &str = include_str!("shaders/matvec_multi.wgsl");
const MATMUL_COOP: &str = include_str!("shaders/matmul_coop.wgsl");
const COOP_EMULATED: &str = include_str!("shaders/coop_emulated.wgsl");
const RMSNORM: &str = include_str!("shaders/rmsnorm.wgsl");
const SILU_MUL: &str = include_str!("shaders/silu_mul.wgsl");
const X16_OUT: &str = include_str!("shaders/x16_out.wgsl");
/// `pack_f16`, the one rounding of every module that writes `matmul_coop`'s f16 x.
pub(crate) const F16_PACK: &str = include_str!("shaders/f16_pack.wgsl");

/// How a decode matrix-vector product reads its input (the matvec entry points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MatvecInput {
    /// x as is.
    Plain,
    /// RMSNorm of x times a weight vector (the norm before the matrix, fused).
    Norm,
    /// silu(gate) * up from a [gate | up] row (the FFN activation, fused).
    Glu,
    /// As `Norm`, followed by RoPE and the K/V cache store (the q|k|v product of a layer).
    NormRope,
    /// As `Norm` on a gate|up matrix with interleaved rows, followed by SiLU·mul.
    NormGlu,
}

impl MatvecInput {
    fn entry(self) -> &'static str {
        match self {
            MatvecInput::Plain => "matvec",
            MatvecInput::Norm => "matvec_norm",
            MatvecInput::Glu => "matvec_glu",
            MatvecInput::NormRope => "matvec_norm_rope",
            MatvecInput::NormGlu => "matvec_norm_glu",
        }
    }
}

fn load_unit_source(ty: WeightType) -> &'static str {
    match ty {
        WeightType::F32 => include_str!("shaders/f32.wgsl"),
        // F16 and BF16 share their unit functions (half_words.wgsl) and differ in `half_vec`.
        WeightType::F16 => concat!(
            include_str!("shaders/f16.wgsl"),
            include_str!("shaders/half_words.wgsl")
        ),
        WeightType::BF16 => concat!(
            include_str!("shaders/bf16.wgsl"),
            include_str!("shaders/half_words.wgsl")
        ),
        WeightType::Q4_0 => include_str!("shaders/q4_0.wgsl"),
        WeightType::Q4_1 => include_str!("shaders/q4_1.wgsl"),
        WeightType::Q8_0 => include_str!("shaders/q8_0.wgsl"),
        // Q4_K and Q5_K share their packed sub-block scales (k_scales.wgsl).
        WeightType::Q4K => concat!(
            include_str!("shaders/k_scales.wgsl"),
            include_str!("shaders/q4_k.wgsl")
        ),
        WeightType::Q5K => concat!(
            include_str!("shaders/k_scales.wgsl"),
            include_str!("shaders/q5_k.wgsl")
        ),
        WeightType::Q6K => include_str!("shaders/q6_k.wgsl"),
    }
}

/// The matmul module of one weight type.
fn single_source(reduce: &str, ty: WeightType) -> String {
    format!(
        "{reduce}\n{MATMUL}\n{MATVEC_MULTI}\n{}\n{SINGLE_TYPE}",
        load_unit_source(ty)
    )
}

/// matmul_coop.wgsl for one tile shape and subgroup size: its constants in front, the lines
/// it leaves to the host written out for each accumulator (`c<i>_<j>` of row block i, token
/// block j), and the prefetch's registers and their loads and stores (see [`coop_prefetch`]).
fn coop_kernel(shape: CoopShape, subgroup: u32) -> String {
    let row_blocks = shape.rows / 32;
    let token_blocks = shape.subgroup_tokens() / 16;
    let blocks = || (0..row_blocks).flat_map(move |i| (0..token_blocks).map(move |j| (i, j)));
    let accumulators: Vec<String> = blocks()
        .map(|(i, j)| format!("var c{i}_{j} = coop_mat16x16<f32, C>();"))
        .collect();
    let mut products: Vec<String> = (0..row_blocks)
        .map(|i| {
            format!(
                "let a{i} = coopLoadT<coop_mat16x16<f16, A>>(&coop_w[a_base + {}u * COOP_SV + kk / COOP_VEC], COOP_SV);",
                16 * i
            )
        })
        .collect();
    products.extend((0..token_blocks).map(|j| {
        format!(
            "let b{j} = coopLoad<coop_mat16x16<f16, B>>(&coop_x[b_base + {}u * COOP_SV + kk / COOP_VEC], COOP_SV);",
            16 * j
        )
    }));
    products.extend(
        blocks().map(|(i, j)| format!("c{i}_{j} = coopMultiplyAdd(a{i}, b{j}, c{i}_{j});")),
    );
    let writes: Vec<String> = blocks()
        .map(|(i, j)| {
            format!(
                "coop_write(c{i}_{j}, sg, lane, row0 + {}u, tok0 + {}u, n);",
                16 * i,
                16 * j
            )
        })
        .collect();
    // Four halves stored into the staged tiles: one vec4 or two vec2 (see matmul_coop.wgsl).
    let put = |tile: &str| {
        match shape.vec {
        4 => format!("fn put_{tile}(o: u32, h: vec4<f16>) {{\n    coop_{tile}[o] = h;\n}}\n"),
        _ => format!(
            "fn put_{tile}(o: u32, h: vec4<f16>) {{\n    coop_{tile}[o] = h.xy;\n    coop_{tile}[o + 1u] = h.zw;\n}}\n"
        ),
    }
    };
    let mut src = format!(
        "const COOP_ROWS: u32 = {}u;\nconst COOP_TOKENS: u32 = {}u;\nconst COOP_SGS: u32 = {}u;\nconst COOP_BUFS: u32 = {}u;\nconst COOP_UNITS: u32 = {}u;\nconst COOP_VEC: u32 = {}u;\nconst COOP_X16: bool = {};\nalias CoopVec = vec{}<f16>;\n{}{}{}{MATMUL_COOP}\n{F16_PACK}",
        shape.rows,
        shape.tokens,
        shape.subgroups,
        shape.buffers,
        shape.units,
        shape.vec,
        shape.x16,
        shape.vec,
        put("w"),
        put("x"),
        coop_prefetch(shape, subgroup)
    );
    for (marker, lines, indent) in [
        ("$ACCUMULATORS", accumulators, "    "),
        ("$PRODUCTS", products, "            "),
        ("$WRITES", writes, "    "),
    ] {
        assert_eq!(src.matches(marker).count(), 1, "matmul_coop.wgsl: {marker}");
        src = src.replace(marker, &lines.join(&format!("\n{indent}")));
    }
    src
}

/// The prefetch of matmul_coop.wgsl (`coopfetch=1`) for one tile shape and subgroup size:
/// `COOP_FETCH`, `COOP_X_PER_UNIT`, the registers of one stage per thread (`CoopFetched`:
/// ceil(items / threads) weight units `w<f>` and x words `x<f>`, item li + f * threads) and
/// `coop_fetch`/`coop_put`, one statement per register. Written out rather than looped over
/// an array, which the drivers seen so far would keep in memory (see matmul_coop.wgsl). The
/// kernel's loop runs them only with `fetch`; without it they are emitted but unused.
fn coop_prefetch(shape: CoopShape, subgroup: u32) -> String {
    let threads = shape.subgroups * subgroup;
    let x_per_unit = if shape.x16 { 4 } else { 8 };
    let w_regs = (shape.rows * shape.units).div_ceil(threads);
    let x_regs = (shape.tokens * shape.units * x_per_unit).div_ceil(threads);
    let item = |f: u32| {
        if f == 0 {
            "li".to_string()
        } else {
            format!("li + {f}u * threads")
        }
    };
    let mut fields = Vec::new();
    let mut fetches = Vec::new();
    let mut puts = Vec::new();
    for f in 0..w_regs {
        fields.push(format!("    w{f}: array<vec4<u32>, 8>,\n"));
        fetches.push(format!(
            "    r.w{f} = coop_fetch_w({}, s, first_row);\n",
            item(f)
        ));
        puts.push(format!(
            "    coop_put_w(r.w{f}, {}, s, first_row, buf);\n",
            item(f)
        ));
    }
    for f in 0..x_regs {
        fields.push(format!("    x{f}: vec4<u32>,\n"));
        fetches.push(format!(
            "    r.x{f} = coop_fetch_x({}, s, t0, n);\n",
            item(f)
        ));
        puts.push(format!("    coop_put_x(r.x{f}, {}, buf);\n", item(f)));
    }
    format!(
        "const COOP_FETCH: bool = {};\nconst COOP_X_PER_UNIT: u32 = {x_per_unit}u;\n\
         struct CoopFetched {{\n{}}}\n\
         fn coop_fetch(li: u32, s: u32, first_row: u32, t0: u32, n: u32) -> CoopFetched {{\n    let threads = COOP_SGS * COOP_SG;\n    var r: CoopFetched;\n{}    return r;\n}}\n\
         fn coop_put(r: CoopFetched, li: u32, s: u32, first_row: u32, buf: u32) {{\n    let threads = COOP_SGS * COOP_SG;\n{}}}\n",
        shape.fetch,
        fields.concat(),
        fetches.concat(),
        puts.concat()
    )
}

/// The module of the cooperative-matrix prompt product (`matmul_coop`) of one type and tile
/// shape for subgroups of `subgroup` threads: the type's matmul module with the kernel
/// appended, behind the directives it needs.
pub(crate) fn coop_source(reduce: &str, ty: WeightType, shape: CoopShape, subgroup: u32) -> String {
    format!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n{}\n{}",
        single_source(reduce, ty),
        coop_kernel(shape, subgroup)
    )
}

/// The module of `matmul_coop` for one type and shape with its cooperative-matrix operations
/// replaced by the plain functions of coop_emulated.wgsl (`prefill=coop-emulated`): each
/// accumulator becomes a struct of the values its thread owns, each load the offset it would
/// read from.
pub(crate) fn coop_emulated_source(
    reduce: &str,
    ty: WeightType,
    shape: CoopShape,
    subgroup: u32,
) -> String {
    let mut src = coop_kernel(shape, subgroup);
    let (row_blocks, token_blocks) = (
        (shape.rows / 32) as usize,
        (shape.subgroup_tokens() / 16) as usize,
    );
    let accumulators = row_blocks * token_blocks;
    // (WGSL of the kernel, replacement, how often it occurs there.)
    for (from, to, count) in [
        (
            "coopLoadT<coop_mat16x16<f16, A>>(&coop_w[",
            "emu_load((",
            row_blocks,
        ),
        (
            "coopLoad<coop_mat16x16<f16, B>>(&coop_x[",
            "emu_load((",
            token_blocks,
        ),
        ("], COOP_SV)", "))", row_blocks + token_blocks),
        ("coopMultiplyAdd(", "emu_mul_add(lane, ", accumulators),
        (
            "coopStore(c, &coop_out[base], 16u);",
            "emu_store(c, base, lane);",
            1,
        ),
        // The accumulators and coop_write's parameter.
        ("coop_mat16x16<f32, C>", "EmuAcc", accumulators + 1),
    ] {
        let found = src.matches(from).count();
        assert_eq!(
            found, count,
            "matmul_coop.wgsl changed: {from:?} occurs {found} times, the emulation expects {count}"
        );
        src = src.replace(from, to);
    }
    format!(
        "enable f16;\n{}\n{src}\n{COOP_EMULATED}",
        single_source(reduce, ty)
    )
}

/// The subgroup reduction functions the modules of a device with subgroups are built with
/// (`matmul_coop` needs subgroups).
pub(crate) const REDUCE_WITH_SUBGROUPS: &str = REDUCE_SUBGROUP;

/// The module of a mixed decode product: type `a` as in [`single_source`], then type `b`'s
/// functions renamed for the second buffer (see MV_MIXED in matmul.wgsl): every function it
/// defines and the helpers it calls get a `_b` suffix, the buffers `w` and `w4` become `wb`
/// and `w4b`, and `p.aux` becomes `p.aux_b`. Field accesses (`q.w`) are left alone.
fn mixed_source(reduce: &str, a: WeightType, b: WeightType) -> String {
    let src = load_unit_source(b).replace("p.aux", "p.aux_b");
    let mut renamed: HashMap<String, String> = src
        .split("fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(|name| (name.trim().to_string(), format!("{}_b", name.trim())))
        .collect();
    for (from, to) in [
        ("w", "wb"),
        ("w4", "w4b"),
        ("byte_at", "byte_at_b"),
        ("f16_at", "f16_at_b"),
    ] {
        renamed.insert(from.into(), to.into());
    }
    let mut out = String::with_capacity(src.len() + 64);
    let mut ident = String::new();
    let mut after_dot = false;
    for c in src.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            ident.push(c);
            continue;
        }
        if !ident.is_empty() {
            match renamed.get(&ident) {
                Some(to) if !after_dot => out.push_str(to),
                _ => out.push_str(&ident),
            }
            ident.clear();
        }
        after_dot = c == '.';
        out.push(c);
    }
    format!(
        "{reduce}\n{MATMUL}\n{}\n{MIXED}\n{out}",
        load_unit_source(a)
    )
}

type MixedKey = (WeightType, WeightType, MatvecInput, MatvecGroup, bool);

/// The pipeline constants of a decode product: groups of 4 rows, units per iteration, int8
/// x, threads.
fn matvec_constants(
    tuning: &KernelTuning,
    group: MatvecGroup,
    int8: bool,
) -> [(&'static str, f64); 4] {
    [
        ("ROW_GROUPS", (group.rows / 4) as f64),
        ("MV_UNITS", tuning.units as f64),
        ("MV_DP4A", int8 as u32 as f64),
        ("MV_WG", group.threads as f64),
    ]
}

/// The decode workgroups `tuning` compiles pipelines for: 4 rows of 64 threads, and 16 rows
/// with each thread count of `mvwg=`. With subgroups, a workgroup may have at most
/// MATVEC_MAX_SUBGROUPS of them (see reduce_subgroup.wgsl): an adapter whose subgroups can
/// be smaller than threads / MATVEC_MAX_SUBGROUPS cannot run the larger workgroups.
fn matvec_groups(gpu: &Gpu, tuning: &KernelTuning) -> Result<Vec<MatvecGroup>, VulkanError> {
    let smallest_subgroup = gpu.adapter_info().subgroup_min_size.max(1);
    let mut groups = vec![MatvecGroup {
        rows: MATVEC_ROWS,
        threads: WORKGROUP,
    }];
    for threads in tuning.tall_threads.all() {
        if gpu.subgroups() && threads > smallest_subgroup * MATVEC_MAX_SUBGROUPS {
            return Err(VulkanError::TuningUnsupported {
                setting: format!("mvwg={threads}"),
                adapter: gpu.adapter_info().name.clone(),
                detail: format!(
                    "decode workgroups of {threads} threads can have more than {MATVEC_MAX_SUBGROUPS} subgroups with the adapter's subgroups of {smallest_subgroup} threads; ask for mvwg={}",
                    smallest_subgroup * MATVEC_MAX_SUBGROUPS
                ),
            });
        }
        groups.push(MatvecGroup {
            rows: TALL_MATVEC_ROWS_PER_GROUP,
            threads,
        });
    }
    Ok(groups)
}

/// A prompt-batch pipeline (`matmul_tiled` or `matmul_coop`) with the rows and tokens one
/// of its workgroups computes.
pub(crate) struct TiledPipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub rows: u32,
    pub tokens: u32,
    /// `matmul_coop`'s f16 copy of x: the conversion's pipeline (`coop_x_f16`) where the tiles
    /// stage it (`coopx16=1`), and whether the product binds the copy at all (every
    /// `matmul_coop` does: its module declares it).
    pub x_f16: Option<wgpu::ComputePipeline>,
    pub binds_x16: bool,
}

/// Compiled pipelines, built once per device.
pub(crate) struct Kernels {
    matmul: HashMap<WeightType, wgpu::ComputePipeline>,
    /// The product of prompt batches of at least TILED_MIN_TOKENS tokens: `matmul_coop` where
    /// the device runs it (`Gpu::uses_cooperative_prefill`), else `matmul_tiled`; empty with
    /// `prefill=rows` (see KernelTuning). Per type, one pipeline per tile of
    /// `KernelTuning::coop_ladder`, largest first (one for `matmul_tiled`).
    matmul_tiled: HashMap<WeightType, Vec<TiledPipeline>>,
    /// Keyed by type, input, workgroup (4 rows of 64 threads, or for tall matrices 16 rows
    /// of the threads `mvwg=` asks for) and whether x is quantized to int8 (`MV_DP4A`).
    matvec: HashMap<(WeightType, MatvecInput, MatvecGroup, bool), wgpu::ComputePipeline>,
    /// Multi-token pipelines (`matvec_multi`), keyed by type and int8 x; empty with
    /// `multi=0`.
    matvec_multi: HashMap<(WeightType, bool), wgpu::ComputePipeline>,
    /// `quantize_x` per type, for the multi-token pipelines with int8 x that read it
    /// (`MV_XQ`); empty with `multi=0` or `xq=0`.
    quantize_x: HashMap<WeightType, wgpu::ComputePipeline>,
    /// `norm_quantize_x` per type (RMSNorm and `quantize_x` in one dispatch); as
    /// `quantize_x`, and empty with `fuseq=0`.
    norm_quantize_x: HashMap<WeightType, wgpu::ComputePipeline>,
    /// `glu_quantize_x` (SiLU·mul and `quantize_x` in one dispatch) per type and whether the
    /// gate|up rows are interleaved (`GLU_INTERLEAVED`); as `norm_quantize_x`.
    glu_quantize_x: HashMap<(WeightType, bool), wgpu::ComputePipeline>,
    /// Mixed decode pipelines (see [`Kernels::matvec_mixed`]), compiled when first asked
    /// for: keyed by the two types, input, workgroup and int8 x.
    mixed: Mutex<HashMap<MixedKey, wgpu::ComputePipeline>>,
    /// `attention_grouped` and `attention_vec` per group size (query heads per workgroup)
    /// and threads per workgroup,
    /// compiled when first asked for (see [`Kernels::attention_grouped`]).
    attention_grouped: Mutex<HashMap<(&'static str, usize, usize), wgpu::ComputePipeline>>,
    /// The f16 copy of x that every `matmul_coop` product binds (see [`Kernels::x16_scratch`]).
    x16_scratch: Mutex<Option<wgpu::Buffer>>,
    /// The reduction functions and settings every module is built with.
    reduce: &'static str,
    tuning: KernelTuning,
    /// Whether the decode products of the int8 types quantize x (unless asked for exact input).
    dp4a: bool,
    attn_groups: usize,
    /// Steps of at most this many tokens use the matrix-vector kernel per token.
    matvec_tokens: u32,
    get_rows: HashMap<WeightType, wgpu::ComputePipeline>,
    /// Layers per submission after the first (see KernelTuning).
    pub submit_layers: usize,
    pub rmsnorm: wgpu::ComputePipeline,
    /// `rmsnorm` and `silu_mul` writing a prompt product's f16 x (`x16_out` in
    /// x16_out.wgsl), where `x16fuse=1` and the prompt products stage an f16 copy of x.
    rmsnorm_x16: Option<wgpu::ComputePipeline>,
    silu_mul_x16: Option<wgpu::ComputePipeline>,
    /// The final RMSNorm of the rows whose logits are wanted (one per sequence).
    pub rmsnorm_rows: wgpu::ComputePipeline,
    pub rope: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
    pub attention_combine: wgpu::ComputePipeline,
    /// Attention of prompt steps with query tiles (attention_tiled.wgsl).
    pub attention_tiled: wgpu::ComputePipeline,
    pub silu_mul: wgpu::ComputePipeline,
    /// Per-head RMSNorm of q and k (head_norm.wgsl).
    pub head_rmsnorm: wgpu::ComputePipeline,
    /// Bias add and scaling (elementwise.wgsl).
    pub add_bias: wgpu::ComputePipeline,
    pub scale: wgpu::ComputePipeline,
    /// The greedy token of each logit row (argmax.wgsl).
    pub argmax_rows: wgpu::ComputePipeline,
}

fn pipeline(
    gpu: &Gpu,
    checks: bool,
    label: &str,
    source: &str,
    entry: &str,
) -> wgpu::ComputePipeline {
    pipeline_with(gpu, checks, label, source, entry, &[])
}

/// A pipeline with values for the module's `override` constants; `checks`: with wgpu's
/// runtime checks (only to measure them, see KernelTuning).
///
/// The modules are created without wgpu's runtime checks (index clamping on every array
/// access, a counter in every loop), which add instructions to every weight load of the
/// decode products.
///
/// Why the unchecked modules are sound: every index the kernels compute is in range for the buffers the host binds:
/// - matrix products and lookups: rows, row lengths and chunk offsets come from `GpuWeight`
///   (sizes checked at upload), token counts are at most the batch the activation buffers
///   were sized for (`LlamaModel::check_chunks`, `max_batch`), token ids are below the
///   vocabulary (checked in `check_chunks`) and the lookup skips ids outside its chunk;
/// - RoPE, the KV store and attention: every token's position is below the context of one
///   slot, which the cos/sin table was sized for, and its slot below the slots the caches
///   were sized for (`LlamaModel::check_chunks`, which also bounds the rows of the final
///   norm by the step's tokens); head counts and sizes come from the model's checked
///   configuration; attention chunks are at most ATTENTION_MAX_CHUNKS and
///   the partials buffer is sized for the largest split; `attention_tiled`'s query tiles
///   name rows of the step's tokens, one tile per workgroup of its grid, and the tile
///   buffer is sized for the grid of a pass of max_batch tokens in max_batch runs;
/// - the greedy pick: one workgroup per logit row of the step, rows the logits and picks
///   buffers were sized for (one per slot);
/// - the test entry points (`testing`) check their inputs' lengths the same way;
/// - workgroup and private arrays are indexed by thread ids and constants within their sizes;
/// - every loop has a bound fixed by those sizes, so none is infinite.
fn pipeline_with(
    gpu: &Gpu,
    checks: bool,
    label: &str,
    source: &str,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    let module = if checks {
        gpu.device.create_shader_module(desc)
    } else {
        // SAFETY: the kernels never index out of bounds nor loop forever, as this
        // function's documentation argues case by case.
        unsafe {
            gpu.device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        }
    };
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            // Every kernel writes workgroup memory before reading it.
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
}

impl Kernels {
    /// The buffer for the f16 copy of x (`x16` in matmul_coop.wgsl) of a product whose x is
    /// `bytes` / 2 bytes of f32: one buffer for all the products made with these kernels,
    /// which run one after another (each writes it with `coop_x_f16`, then reads it, and the
    /// dispatches that share it are ordered), instead of one per product (for an 8B model,
    /// 128 products and 0.8 GiB). A request larger than the buffer replaces it for the
    /// products made after; those made before keep the smaller one, which holds their x.
    pub(crate) fn x16_scratch(&self, gpu: &Gpu, bytes: u64) -> Result<wgpu::Buffer, VulkanError> {
        let mut scratch = self.x16_scratch.lock().unwrap_or_else(|p| p.into_inner());
        match scratch.as_ref() {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let b = gpu.storage("x in f16", bytes)?;
                *scratch = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Compiles every kernel; `types` are the weight types the model needs.
    pub fn new(gpu: &Gpu, types: &[WeightType]) -> Result<Kernels, crate::VulkanError> {
        let mut matmul = HashMap::new();
        let mut matmul_tiled = HashMap::new();
        let mut matvec = HashMap::new();
        let mut matvec_multi = HashMap::new();
        let mut quantize_x = HashMap::new();
        let mut norm_quantize_x = HashMap::new();
        let mut glu_quantize_x = HashMap::new();
        let mut get_rows = HashMap::new();
        let mut coop_x_f16: Option<wgpu::ComputePipeline> = None;
        let tuning = *gpu.tuning();
        let reduce = if gpu.subgroups() {
            REDUCE_SUBGROUP
        } else {
            REDUCE_SHARED
        };
        let matvec_groups = matvec_groups(gpu, &tuning)?;
        for &ty in types {
            if matmul.contains_key(&ty) {
                continue;
            }
            let source = single_source(reduce, ty);
            matmul.insert(
                ty,
                pipeline(
                    gpu,
                    tuning.checks,
                    &format!("matmul {ty:?}"),
                    &source,
                    "matmul",
                ),
            );
            if let Some(size) = gpu.coop_subgroup() {
                let coop_pipeline = |shape: CoopShape| {
                    let coop = if tuning.prefill == Prefill::CoopEmulated {
                        coop_emulated_source(reduce, ty, shape, size)
                    } else {
                        coop_source(reduce, ty, shape, size)
                    };
                    // The conversion does not depend on the type or tile: one pipeline for all.
                    let x_f16 = shape.x16.then(|| {
                        coop_x_f16
                            .get_or_insert_with(|| {
                                pipeline(gpu, tuning.checks, "coop_x_f16", &coop, "coop_x_f16")
                            })
                            .clone()
                    });
                    TiledPipeline {
                        pipeline: pipeline_with(
                            gpu,
                            tuning.checks,
                            &format!("matmul_coop {ty:?} {}x{}", shape.rows, shape.tokens),
                            &coop,
                            "matmul_coop",
                            &[("COOP_SG", size as f64)],
                        ),
                        rows: shape.rows,
                        tokens: shape.tokens,
                        x_f16,
                        binds_x16: true,
                    }
                };
                let workgroup_limit = gpu.device.limits().max_compute_workgroup_storage_size;
                let ladder = tuning.coop_ladder(workgroup_limit as u64);
                matmul_tiled.insert(ty, ladder.into_iter().map(coop_pipeline).collect());
            } else if tuning.prefill != Prefill::Rows {
                matmul_tiled.insert(
                    ty,
                    vec![TiledPipeline {
                        pipeline: pipeline(
                            gpu,
                            tuning.checks,
                            &format!("matmul_tiled {ty:?}"),
                            &source,
                            "matmul_tiled",
                        ),
                        rows: TILE_ROWS,
                        tokens: TILE_TOKENS,
                        x_f16: None,
                        binds_x16: false,
                    }],
                );
            }
            for input in [
                MatvecInput::Plain,
                MatvecInput::Norm,
                MatvecInput::Glu,
                MatvecInput::NormRope,
                MatvecInput::NormGlu,
            ] {
                for &group in &matvec_groups {
                    let label = format!(
                        "{} {ty:?} x{} ({} threads)",
                        input.entry(),
                        group.rows,
                        group.threads
                    );
                    let int8 = tuning.dp4a && dp4a_type(ty);
                    // The output head keeps x in f32 (`MatmulMode::exact_input`): plain and
                    // RMSNorm inputs also get pipelines without int8 x.
                    let variants: &[bool] =
                        if int8 && matches!(input, MatvecInput::Plain | MatvecInput::Norm) {
                            &[true, false]
                        } else {
                            &[int8]
                        };
                    for &q in variants {
                        let constants = matvec_constants(&tuning, group, q);
                        matvec.insert(
                            (ty, input, group, q),
                            pipeline_with(
                                gpu,
                                tuning.checks,
                                &label,
                                &source,
                                input.entry(),
                                &constants,
                            ),
                        );
                    }
                }
            }
            let int8 = tuning.dp4a && dp4a_type(ty);
            if tuning.multi {
                // As the plain one-token product: also without int8 x for the output head.
                for q in if int8 { vec![true, false] } else { vec![false] } {
                    let constants = [
                        ("ROW_GROUPS", (tuning.multi_rows / 4) as f64),
                        ("MV_COLS", tuning.multi_cols as f64),
                        ("MV_DP4A", q as u32 as f64),
                        ("MV_XQ", (q && tuning.quantize_once) as u32 as f64),
                    ];
                    matvec_multi.insert(
                        (ty, q),
                        pipeline_with(
                            gpu,
                            tuning.checks,
                            &format!("matvec_multi {ty:?}"),
                            &source,
                            "matvec_multi",
                            &constants,
                        ),
                    );
                }
                if int8 && tuning.quantize_once {
                    quantize_x.insert(
                        ty,
                        pipeline_with(
                            gpu,
                            tuning.checks,
                            &format!("quantize_x {ty:?}"),
                            &source,
                            "quantize_x",
                            &[("MV_DP4A", 1.0)],
                        ),
                    );
                    if tuning.fused_quantize {
                        norm_quantize_x.insert(
                            ty,
                            pipeline_with(
                                gpu,
                                tuning.checks,
                                &format!("norm_quantize_x {ty:?}"),
                                &source,
                                "norm_quantize_x",
                                &[("MV_DP4A", 1.0)],
                            ),
                        );
                        for interleaved in [false, true] {
                            glu_quantize_x.insert(
                                (ty, interleaved),
                                pipeline_with(
                                    gpu,
                                    tuning.checks,
                                    &format!("glu_quantize_x {ty:?}"),
                                    &source,
                                    "glu_quantize_x",
                                    &[
                                        ("MV_DP4A", 1.0),
                                        ("GLU_INTERLEAVED", interleaved as u32 as f64),
                                    ],
                                ),
                            );
                        }
                    }
                }
            }
            get_rows.insert(
                ty,
                pipeline(
                    gpu,
                    tuning.checks,
                    &format!("get_rows {ty:?}"),
                    &source,
                    "get_rows",
                ),
            );
        }
        let attention = include_str!("shaders/attention.wgsl");
        // The producers of an f16 x need f16 arithmetic, which every device that runs
        // `coop_x_f16` has.
        let x16_producer = |label: &str, module: &str| {
            (tuning.x16_fuse && coop_x_f16.is_some()).then(|| {
                let source = format!("enable f16;\n{module}\n{X16_OUT}\n{F16_PACK}");
                pipeline(gpu, tuning.checks, label, &source, "x16_out")
            })
        };
        let rmsnorm_x16 = x16_producer("rmsnorm to f16 x", RMSNORM);
        let silu_mul_x16 = x16_producer("silu_mul to f16 x", SILU_MUL);
        let kernels = Kernels {
            matmul,
            matmul_tiled,
            matvec,
            matvec_multi,
            quantize_x,
            norm_quantize_x,
            glu_quantize_x,
            get_rows,
            mixed: Mutex::new(HashMap::new()),
            attention_grouped: Mutex::new(HashMap::new()),
            x16_scratch: Mutex::new(None),
            reduce,
            tuning,
            dp4a: tuning.dp4a,
            attn_groups: tuning.attn_groups,
            matvec_tokens: tuning.matvec_tokens,
            submit_layers: tuning.submit_layers,
            rmsnorm: pipeline(gpu, tuning.checks, "rmsnorm", RMSNORM, "rmsnorm"),
            rmsnorm_x16,
            silu_mul_x16,
            rmsnorm_rows: pipeline(gpu, tuning.checks, "rmsnorm rows", RMSNORM, "rmsnorm_rows"),
            rope: pipeline(
                gpu,
                tuning.checks,
                "rope",
                include_str!("shaders/rope.wgsl"),
                "rope",
            ),
            attention: pipeline(gpu, tuning.checks, "attention", attention, "attention"),
            attention_combine: pipeline(
                gpu,
                tuning.checks,
                "attention combine",
                attention,
                "combine",
            ),
            attention_tiled: pipeline(
                gpu,
                tuning.checks,
                "attention tiled",
                include_str!("shaders/attention_tiled.wgsl"),
                "attention_tiled",
            ),
            silu_mul: pipeline(gpu, tuning.checks, "silu_mul", SILU_MUL, "silu_mul"),
            head_rmsnorm: pipeline(
                gpu,
                tuning.checks,
                "head rmsnorm",
                include_str!("shaders/head_norm.wgsl"),
                "head_rmsnorm",
            ),
            add_bias: pipeline(gpu, tuning.checks, "add bias", ELEMENTWISE, "add_bias"),
            scale: pipeline(gpu, tuning.checks, "scale", ELEMENTWISE, "scale"),
            argmax_rows: pipeline(
                gpu,
                tuning.checks,
                "argmax rows",
                include_str!("shaders/argmax.wgsl"),
                "argmax_rows",
            ),
        };
        gpu.check("compiling the compute kernels")?;
        Ok(kernels)
    }

    pub fn matmul(&self, ty: WeightType) -> &wgpu::ComputePipeline {
        &self.matmul[&ty]
    }

    /// The prompt-batch pipelines of many tokens (`matmul_coop` in each tile of the ladder,
    /// largest first, or `matmul_tiled`); empty where prompt batches use `matmul` only
    /// (`prefill=rows`).
    pub fn matmul_tiled(&self, ty: WeightType) -> &[TiledPipeline] {
        self.matmul_tiled.get(&ty).map_or(&[], Vec::as_slice)
    }

    /// A decode pipeline for the workgroup [`matvec_group`](Self::matvec_group) gives;
    /// `exact`: x stays f32 even for the types whose products quantize it (only the plain
    /// and RMSNorm inputs have such pipelines).
    pub fn matvec(
        &self,
        ty: WeightType,
        input: MatvecInput,
        group: MatvecGroup,
        exact: bool,
    ) -> &wgpu::ComputePipeline {
        &self.matvec[&(ty, input, group, self.dp4a && dp4a_type(ty) && !exact)]
    }

    /// Whether the output head of a step with several logit rows reads int8 x (`headq=`):
    /// asked for, and `ty` has a multi-token product with int8 x.
    pub fn head_int8(&self, ty: WeightType) -> bool {
        self.tuning.head_int8
            && self.dp4a
            && dp4a_type(ty)
            && self.matvec_multi.contains_key(&(ty, true))
    }

    /// The multi-token matrix-vector pipeline (`matvec_multi`) with its rows and tokens per
    /// workgroup, or `None` with `multi=0`; `exact` as for [`matvec`](Self::matvec).
    pub fn matvec_multi(
        &self,
        ty: WeightType,
        exact: bool,
    ) -> Option<(&wgpu::ComputePipeline, u32, u32)> {
        let int8 = self.dp4a && dp4a_type(ty) && !exact;
        self.matvec_multi
            .get(&(ty, int8))
            .map(|p| (p, self.tuning.multi_rows, self.tuning.multi_cols))
    }

    /// The pipeline that quantizes a step's x once for the multi-token pipeline of `ty`
    /// (`quantize_x`, dispatched before it), or `None` where that pipeline reads f32 x or
    /// quantizes in every workgroup (`xq=0`).
    pub fn multi_quantize(&self, ty: WeightType, exact: bool) -> Option<&wgpu::ComputePipeline> {
        if exact {
            return None;
        }
        self.quantize_x.get(&ty)
    }

    /// The pipeline that normalizes a step's x (RMSNorm) and quantizes it in one dispatch for
    /// the multi-token pipeline of `ty` (`norm_quantize_x`, replacing `rmsnorm` and
    /// [`multi_quantize`](Self::multi_quantize)), or `None` where there is no such
    /// quantization or `fuseq=0`.
    pub fn multi_norm_quantize(
        &self,
        ty: WeightType,
        exact: bool,
    ) -> Option<&wgpu::ComputePipeline> {
        if exact {
            return None;
        }
        self.norm_quantize_x.get(&ty)
    }

    /// The pipeline that computes SiLU·mul of a step's gate|up rows (`interleaved` or as
    /// [gate | up]) and quantizes the result in one dispatch for the multi-token pipeline of
    /// `ty` (`glu_quantize_x`, replacing `silu_mul` and
    /// [`multi_quantize`](Self::multi_quantize)), or `None` as for
    /// [`multi_norm_quantize`](Self::multi_norm_quantize).
    pub fn multi_glu_quantize(
        &self,
        ty: WeightType,
        interleaved: bool,
    ) -> Option<&wgpu::ComputePipeline> {
        self.glu_quantize_x.get(&(ty, interleaved))
    }

    /// The decode pipeline of a mixed product: rows below `Params.split` of type `a`, the
    /// rest of type `b` in a second buffer (bindings 13 and 14; see MV_MIXED in
    /// matmul.wgsl). x is quantized to int8 when either type's products do (each type's
    /// `unit_dot` uses the int8 values only where it has an integer path). Compiled on first
    /// use and kept.
    pub fn matvec_mixed(
        &self,
        gpu: &Gpu,
        (a, b): (WeightType, WeightType),
        input: MatvecInput,
        group: MatvecGroup,
        exact: bool,
    ) -> Result<wgpu::ComputePipeline, crate::VulkanError> {
        let int8 = self.dp4a && (dp4a_type(a) || dp4a_type(b)) && !exact;
        let key = (a, b, input, group, int8);
        let mut cache = self.mixed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let label = format!("{} {a:?}|{b:?}", input.entry());
        let pipeline = pipeline_with(
            gpu,
            self.tuning.checks,
            &label,
            &mixed_source(self.reduce, a, b),
            input.entry(),
            &matvec_constants(&self.tuning, group, int8),
        );
        gpu.check("compiling a mixed-type decode kernel")?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Whether a step of `n_tokens` tokens runs `attention_tiled` (see
    /// [`KernelTuning::tiled_attention_for`]).
    pub fn tiled_attention_for(&self, n_tokens: usize, sequences: usize) -> bool {
        self.tuning.tiled_attention_for(n_tokens, sequences)
    }

    /// `attention_coop` for head dimension `head_dim`, where the steps that run attention
    /// with query tiles take it: `pattn=2`, a device whose prompt products run on
    /// cooperative matrices (or their emulation, `prefill=coop-emulated`, which then builds this
    /// kernel's emulation too) and a head
    /// dimension it runs in the adapter's workgroup memory (`attention_coop::unsupported`);
    /// else `None` (they run `attention_tiled`), logged with the reason where `pattn=2` asked.
    pub fn attention_coop(
        &self,
        gpu: &Gpu,
        head_dim: usize,
    ) -> Result<Option<wgpu::ComputePipeline>, crate::VulkanError> {
        self.attention_coop_variant(gpu, head_dim, false)
    }

    /// `attention_coop` writing its output as the attention output product's f16 x
    /// (attention_coop_x16.wgsl), where `attention_coop` runs and `x16fuse=1` (with the f16
    /// copy of x staged by the prompt products, `coopx16=1`); else `None`.
    pub fn attention_coop_x16(
        &self,
        gpu: &Gpu,
        head_dim: usize,
    ) -> Result<Option<wgpu::ComputePipeline>, crate::VulkanError> {
        // The f16 x producers exist exactly where `x16fuse=1` and the products stage f16 x.
        if self.x16_producer(true).is_none() {
            return Ok(None);
        }
        self.attention_coop_variant(gpu, head_dim, true)
    }

    /// [`attention_coop`](Self::attention_coop), with its output in f16 x where `x16`.
    fn attention_coop_variant(
        &self,
        gpu: &Gpu,
        head_dim: usize,
        x16: bool,
    ) -> Result<Option<wgpu::ComputePipeline>, crate::VulkanError> {
        if !self.tuning.coop_attention() {
            return Ok(None);
        }
        let limit = gpu.limits().max_compute_workgroup_storage_size as u64;
        let why = match gpu.coop_subgroup() {
            None => Some(format!(
                "the prompt products do not run on cooperative matrices ({})",
                gpu.prefill_product()
            )),
            Some(_) => crate::attention_coop::unsupported(head_dim, limit),
        };
        if let Some(why) = why {
            // Logged once, for the plain kernel.
            if !x16 {
                tracing::info!(
                    "prompt attention runs attention_tiled, not attention_coop (pattn=2): {why}"
                );
            }
            return Ok(None);
        }
        let subgroup = gpu.coop_subgroup().unwrap_or(32);
        let emulated = self.tuning.prefill == Prefill::CoopEmulated;
        let (label, source) = if x16 {
            (
                "attention coop to f16 x",
                crate::attention_coop::source_x16(head_dim, emulated),
            )
        } else {
            (
                "attention coop",
                crate::attention_coop::source(head_dim, emulated),
            )
        };
        let pipeline = pipeline_with(
            gpu,
            self.tuning.checks,
            label,
            &source,
            "attention_coop",
            &[("COOP_SG", subgroup as f64)],
        );
        gpu.check("compiling the prompt attention on cooperative matrices")?;
        Ok(Some(pipeline))
    }

    /// Whether decode attention runs `attention_grouped` for this head layout (see
    /// [`KernelTuning::grouped_attention_for`]).
    pub fn grouped_attention_for(&self, n_head: usize, n_kv: usize) -> bool {
        self.tuning.grouped_attention_for(n_head, n_kv)
    }

    /// Whether decode attention runs `attention_vec` (see [`KernelTuning::vec_attention`]).
    pub fn vec_attention(&self) -> bool {
        self.tuning.vec_attention()
    }

    /// Threads per `attention_vec` workgroup asked for (`dwg=`).
    pub fn vec_attention_threads(&self) -> usize {
        self.tuning.vec_attention_threads()
    }

    /// `attention_grouped` for `group` query heads per K/V head (1..=MAX_ATTENTION_GROUP):
    /// attention.wgsl with attention_grouped.wgsl appended and the group size prepended as
    /// the constant `GROUP`. Compiled on first use and kept.
    pub fn attention_grouped(
        &self,
        gpu: &Gpu,
        group: usize,
    ) -> Result<wgpu::ComputePipeline, crate::VulkanError> {
        self.grouped_decode_attention(gpu, "attention_grouped", group, 64)
    }

    /// `attention_vec` (the decode attention with coalesced K loads, `dattn=1`) for `group`
    /// query heads per workgroup (1..=MAX_ATTENTION_GROUP; 1: a workgroup per query head
    /// as `attention`, the heads per K/V head: as `attention_grouped`) and `threads` per
    /// workgroup (see [`attention_vec_threads`](crate::model::attention_vec_threads)):
    /// attention.wgsl with attention_vec.wgsl appended and both prepended as the constants
    /// `GROUP` and `VEC_WG`. Compiled on first use and kept.
    pub fn attention_vec(
        &self,
        gpu: &Gpu,
        group: usize,
        threads: usize,
    ) -> Result<wgpu::ComputePipeline, crate::VulkanError> {
        if !VEC_ATTENTION_THREADS.contains(&threads) {
            return Err(crate::VulkanError::InvalidInput(format!(
                "attention_vec takes 64, 128, 256, 512 or 1024 threads a workgroup, not {threads}"
            )));
        }
        self.grouped_decode_attention(gpu, "attention_vec", group, threads)
    }

    /// The decode attention kernel `entry` (`attention_grouped` or `attention_vec`, each in
    /// the file of its name appended to attention.wgsl) for `group` query heads a workgroup.
    fn grouped_decode_attention(
        &self,
        gpu: &Gpu,
        entry: &'static str,
        group: usize,
        threads: usize,
    ) -> Result<wgpu::ComputePipeline, crate::VulkanError> {
        if !(1..=MAX_ATTENTION_GROUP).contains(&group) {
            return Err(crate::VulkanError::InvalidInput(format!(
                "grouped attention takes 1 to {MAX_ATTENTION_GROUP} query heads per K/V head, not {group}; run it with gqa=0"
            )));
        }
        let mut cache = self
            .attention_grouped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&(entry, group, threads)) {
            return Ok(p.clone());
        }
        let file = if entry == "attention_vec" {
            include_str!("shaders/attention_vec.wgsl")
        } else {
            include_str!("shaders/attention_grouped.wgsl")
        };
        let source = format!(
            "const GROUP: u32 = {group}u;\nconst VEC_WG: u32 = {threads}u;\n{}\n{file}",
            include_str!("shaders/attention.wgsl"),
        );
        let pipeline = pipeline(
            gpu,
            self.tuning.checks,
            &format!("{entry} {group}x{threads}"),
            &source,
            entry,
        );
        gpu.check("compiling a grouped decode attention kernel")?;
        cache.insert((entry, group, threads), pipeline.clone());
        Ok(pipeline)
    }

    /// Attention workgroups a step aims for (see KernelTuning).
    pub fn attention_groups(&self) -> usize {
        self.attn_groups
    }

    /// The most chunks of positions per (head, token) of decode attention (`chunks=`).
    pub fn attention_max_chunks(&self) -> usize {
        self.tuning.attn_max_chunks
    }

    /// The most chunks for a step whose longest sequence holds `len` positions: with
    /// `chunklen=N`, at least N positions a chunk (one chunk, and no combine dispatch, below
    /// 2N), else `chunks=`. A split saves attention time only where the chunks are long
    /// enough to pay for the combine's dispatch.
    pub fn attention_max_chunks_for(&self, len: usize) -> usize {
        self.tuning.attention_max_chunks_for(len)
    }

    /// The most tokens a step may have to run its products with the matrix-vector kernel
    /// (see MATVEC_MAX_TOKENS).
    pub fn matvec_tokens(&self) -> u32 {
        self.matvec_tokens
    }

    /// `coopmin=`: see `KernelTuning::coop_ladder`.
    pub fn coop_min_groups(&self) -> u32 {
        self.tuning.coop_min_groups()
    }

    /// The decode workgroup of a matrix of `rows` rows of `k` weights: tall matrices (at
    /// least `tall=` rows; unset, at least TALL_MATVEC_ROWS) 16 rows with the threads of
    /// `mvwg=`, the others 4 rows of 64 threads.
    pub fn matvec_group(&self, rows: usize, k: usize) -> MatvecGroup {
        if rows >= self.tuning.tall_rows() {
            MatvecGroup {
                rows: TALL_MATVEC_ROWS_PER_GROUP,
                threads: self.tuning.tall_threads.for_k(k),
            }
        } else {
            MatvecGroup {
                rows: MATVEC_ROWS,
                threads: WORKGROUP,
            }
        }
    }

    /// The pipeline that computes a prompt product's x and writes it as the product's f16
    /// copy (`x16_out`): from the RMSNorm before it where `norm`, else from SiLU·mul.
    /// `None` unless `x16fuse=1` and the prompt products stage that copy (`coopx16=1`).
    pub fn x16_producer(&self, norm: bool) -> Option<&wgpu::ComputePipeline> {
        if norm {
            self.rmsnorm_x16.as_ref()
        } else {
            self.silu_mul_x16.as_ref()
        }
    }

    pub fn get_rows(&self, ty: WeightType) -> &wgpu::ComputePipeline {
        &self.get_rows[&ty]
    }
}

/// Creates a bind group for `pipeline` from `(binding, buffer)` pairs (whole buffers).
pub(crate) fn bind(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: *i,
            resource: b.as_entire_binding(),
        })
        .collect();
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

#[cfg(test)]
mod tuning_tests {
    use super::*;

    fn parse(spec: &str) -> Result<KernelTuning, String> {
        spec.parse()
    }

    #[test]
    fn prompt_attention_is_read_and_follows_the_prompt_products() {
        let on = KernelTuning::default();
        assert!(on.tiled_attention_for(17, 1) && on.tiled_attention_for(512, 1));
        assert!(on.coop_attention());
        // A prompt chunk beside decode tokens.
        assert!(on.tiled_attention_for(40, 9));
        // Decode and batched-decode steps, of any size, keep the decode kernel.
        assert!(!on.tiled_attention_for(1, 1) && !on.tiled_attention_for(16, 1));
        assert!(!on.tiled_attention_for(64, 64));
        assert!(parse("batch=1").unwrap().tiled_attention_for(16, 1));
        assert!(!parse("batch=1").unwrap().tiled_attention_for(15, 1));
        assert!(!parse("pattn=0").unwrap().tiled_attention_for(512, 1));
        assert!(parse("pattn=1").unwrap().tiled_attention_for(512, 1));
        assert!(!parse("pattn=1").unwrap().coop_attention());
        let coop = parse("pattn=2").unwrap();
        assert!(coop.coop_attention() && coop.tiled_attention_for(512, 1));
        assert!(!coop.tiled_attention_for(1, 1));
        let err = parse("pattn=3").unwrap_err();
        assert!(err.contains("pattn=0|1|2"), "{err}");
    }

    #[test]
    fn grouped_attention_is_read_and_takes_groups_up_to_the_most() {
        assert!(!KernelTuning::default().grouped_attention_for(32, 8));
        let on = parse("gqa=1").unwrap();
        // Llama-3 8B (32/8), SmolLM2 (9/3), no grouping, the largest group.
        assert!(on.grouped_attention_for(32, 8) && on.grouped_attention_for(9, 3));
        assert!(on.grouped_attention_for(4, 4) && on.grouped_attention_for(64, 8));
        // Groups past MAX_ATTENTION_GROUP keep `attention`.
        assert!(!on.grouped_attention_for(32, 2));
        assert!(!parse("gqa=0").unwrap().grouped_attention_for(32, 8));
        assert!(parse("gqa=1").unwrap().grouped_attention_for(32, 8));
        assert!(!on
            .with_grouped_attention(false)
            .grouped_attention_for(32, 8));
        let err = parse("gqa=2").unwrap_err();
        assert!(err.contains("gqa=0|1"), "{err}");
    }

    #[test]
    fn vec_attention_is_read_and_on_by_default() {
        assert!(KernelTuning::default().vec_attention());
        let on = parse("dattn=1").unwrap();
        assert!(on.vec_attention() && !on.grouped_attention_for(32, 8));
        let both = parse("dattn=1,gqa=1").unwrap();
        assert!(both.vec_attention() && both.grouped_attention_for(32, 8));
        assert!(!parse("dattn=0").unwrap().vec_attention());
        assert!(!on.with_vec_attention(false).vec_attention());
        assert_eq!(on.vec_attention_threads(), 64);
        assert_eq!(parse("dwg=256").unwrap().vec_attention_threads(), 256);
        let err = parse("dwg=32").unwrap_err();
        assert!(err.contains("dwg=64|128|256"), "{err}");
        let err = parse("dattn=2").unwrap_err();
        assert!(err.contains("dattn=0|1"), "{err}");
    }

    #[test]
    fn coop_shapes_are_read() {
        assert_eq!(parse("").unwrap().coop_shape(), CoopShape::DEFAULT);
        let shape = |spec| {
            let s = parse(spec).unwrap().coop_shape();
            (s.rows, s.tokens, s.units, s.vec, s.x16)
        };
        assert_eq!(shape("coopk=2"), (64, 64, 2, 4, true));
        assert_eq!(shape("coopk=4,cooptile=64"), (64, 64, 4, 4, true));
        assert_eq!(shape("coopk=2,cooptile=128"), (128, 64, 2, 4, true));
        assert_eq!(
            shape("cooptile=128x128,coopvec=2,coopx16=0"),
            (128, 128, 1, 2, false)
        );
        assert_eq!(shape("cooptile = 64x32, coopk=1"), (64, 32, 1, 4, true));
        let err = parse("coopk=3").unwrap_err();
        assert!(
            err.contains("coopk=1|2|4")
                && err.contains("coopvec=2|4")
                && err.contains("coopx16=0|1")
                && err.contains("cooptile=64|128"),
            "{err}"
        );
        // The default fits WebGPU's default 16 KiB (as matmul_coop.wgsl says: 14 KiB).
        assert_eq!(CoopShape::DEFAULT.workgroup_bytes(), 14 * 1024);
        assert_eq!(
            parse("coopk=2,cooptile=128x128")
                .unwrap()
                .coop_shape()
                .setting(),
            "cooptile=128x128,coopk=2,coopvec=4,coopx16=1,coopsg=4,coopbuf=1,coopfetch=1"
        );
        // The register prefetch is on by default, off with coopfetch=0, and keeps the tile
        // the device picks (it is no tile key).
        assert!(parse("").unwrap().coop_shape().fetch);
        let no_fetch = parse("coopfetch=0").unwrap();
        assert!(!no_fetch.with_coop_tile_for(48 * 1024).coop_shape().fetch);
        assert_eq!(
            no_fetch.with_coop_tile_for(48 * 1024).coop_shape().rows,
            128
        );
        assert!(parse("coopfetch=1").unwrap().coop_shape() == CoopShape::DEFAULT);
        // Two buffers: twice the tiles.
        let two = parse("cooptile=128,coopbuf=2").unwrap().coop_shape();
        assert_eq!(two.workgroup_bytes(), 2 * 2 * 192 * 40 + 4 * 1024);
        // Eight subgroups: two across the rows, four across the tokens, 16 tokens each at
        // least; one f32 16x16 matrix each.
        let eight = parse("cooptile=128x128,coopsg=8").unwrap().coop_shape();
        assert_eq!((eight.subgroups, eight.subgroup_tokens()), (8, 32));
        assert_eq!(eight.workgroup_bytes(), 2 * 256 * 40 + 8 * 1024);
        assert_eq!(
            parse("coopsg=8").unwrap().coop_shape().subgroup_tokens(),
            16
        );
        let err = parse("coopsg=8,cooptile=128x32").unwrap_err();
        assert!(
            err.contains("coopsg=8 needs tiles of at least 64 tokens")
                && err.contains("cooptile=<rows>x64"),
            "{err}"
        );
    }

    #[test]
    fn the_coop_tile_is_taller_where_workgroup_memory_allows() {
        let tile = |spec: &str, limit| {
            let s = parse(spec).unwrap().with_coop_tile_for(limit).coop_shape();
            (s.rows, s.tokens, s.subgroups, s.buffers)
        };
        // 128 x 128 with eight subgroups and two buffers needs 48 KiB (an H100's limit);
        // 128 x 64 of one buffer 19 KiB: over WebGPU's default 16 KiB, within 32.
        assert_eq!(tile("", 48 * 1024), (128, 128, 8, 2));
        assert_eq!(tile("", 64 * 1024), (128, 128, 8, 2));
        assert_eq!(tile("", 32 * 1024), (128, 64, 4, 1));
        assert_eq!(tile("", 16 * 1024), (64, 64, 4, 1));
        // Two units per stage: 80 KiB for the widest, 31 KiB for 128 x 64.
        assert_eq!(tile("coopk=2", 48 * 1024), (128, 64, 4, 1));
        // Four units per stage at 128 rows need 55 KiB: the default tile stays.
        assert_eq!(tile("coopk=4", 48 * 1024), (64, 64, 4, 1));
        // A tile, subgroup count or buffer count asked for is kept.
        assert_eq!(tile("cooptile=64", 48 * 1024), (64, 64, 4, 1));
        assert_eq!(tile("cooptile=64x128", 48 * 1024), (64, 128, 4, 1));
        assert_eq!(tile("coopsg=8", 48 * 1024), (64, 64, 8, 1));
        assert_eq!(tile("coopbuf=2", 48 * 1024), (64, 64, 4, 2));
    }

    #[test]
    fn chunklen_keeps_short_sequences_in_few_chunks() {
        let chunks = |spec: &str, len| parse(spec).unwrap().attention_max_chunks_for(len);
        assert_eq!(chunks("", 100), 32);
        assert_eq!(chunks("chunks=8", 100), 8);
        assert_eq!(chunks("chunklen=256", 100), 1);
        assert_eq!(chunks("chunklen=256", 511), 1);
        assert_eq!(chunks("chunklen=256", 512), 2);
        assert_eq!(chunks("chunklen=256", 4096), 16);
        assert_eq!(chunks("chunklen=64", 4096), 32);
        assert_eq!(chunks("chunklen=64,chunks=64", 4096), 64);
        assert!(parse("chunklen=x").is_err());
        // silug: 1 to the 65535 workgroups a dispatch may have along x, all by default.
        assert_eq!(parse("silug=1024").unwrap().silu_groups(1 << 30), 1024);
        assert_eq!(parse("").unwrap().silu_groups(1 << 30), 65535);
        assert_eq!(parse("").unwrap().silu_groups(100), 2);
        assert!(parse("silug=0").is_err() && parse("silug=65536").is_err());
    }

    #[test]
    fn coopmin_adds_the_smaller_tiles_that_fit() {
        let ladder = |spec: &str, limit| {
            parse(spec)
                .unwrap()
                .with_coop_tile_for(limit)
                .coop_ladder(limit)
                .iter()
                .map(|s| (s.rows, s.tokens, s.subgroups, s.buffers, s.units))
                .collect::<Vec<_>>()
        };
        // A value that is not a workgroup count is refused at load.
        assert!(parse("coopmin=4294967296").is_err() && parse("coopmin=many").is_err());
        // With coopmin=0: the one tile; by default (256) the smaller ones too.
        assert_eq!(ladder("coopmin=0", 48 * 1024), [(128, 128, 8, 2, 1)]);
        assert_eq!(
            ladder("", 48 * 1024),
            [(128, 128, 8, 2, 1), (128, 64, 4, 1, 1), (64, 64, 4, 1, 1)]
        );
        // lavapipe's 32 KiB: 128 x 64 first.
        assert_eq!(
            ladder("coopmin=256", 32 * 1024),
            [(128, 64, 4, 1, 1), (64, 64, 4, 1, 1)]
        );
        // A tile asked for heads the ladder, with its stage; smaller ones that do not fit
        // are left out (128 x 64 with two units a stage: 31 KiB).
        assert_eq!(
            ladder("cooptile=128x128,coopsg=8,coopk=2,coopmin=1", 48 * 1024),
            [(128, 128, 8, 1, 2), (128, 64, 4, 1, 2), (64, 64, 4, 1, 2)]
        );
        assert_eq!(
            ladder("cooptile=128x64,coopk=2,coopmin=1", 24 * 1024),
            [(128, 64, 4, 1, 2), (64, 64, 4, 1, 2)]
        );
        assert_eq!(
            ladder("cooptile=64,coopmin=1", 48 * 1024),
            [(64, 64, 4, 1, 1)]
        );
    }

    #[test]
    fn coop_sources_are_written_out_for_every_shape() {
        // Every shape's kernel has its host-written lines filled in, and its emulation finds
        // each operation it replaces as often as the shape has accumulators and operands
        // (coop_emulated_source asserts the counts).
        for rows in [64, 128] {
            for tokens in [32, 64, 128] {
                for (units, vec, x16, subgroups, buffers, fetch, subgroup) in [
                    (1, 4, true, 4, 1, false, 32),
                    (2, 2, false, 4, 1, true, 8),
                    (4, 4, true, 4, 2, false, 16),
                    (1, 2, true, 4, 1, true, 32),
                    (1, 4, true, 8, 1, false, 32),
                    (2, 4, true, 8, 2, true, 32),
                    (1, 4, false, 8, 2, true, 16),
                ] {
                    let shape = CoopShape {
                        rows,
                        tokens,
                        units,
                        vec,
                        x16,
                        subgroups,
                        buffers,
                        fetch,
                    };
                    if shape.subgroup_tokens() < 16 {
                        continue;
                    }
                    let real = coop_source(REDUCE_SUBGROUP, WeightType::Q4_0, shape, subgroup);
                    let emulated =
                        coop_emulated_source(REDUCE_SUBGROUP, WeightType::Q4_0, shape, subgroup);
                    for src in [&real, &emulated] {
                        assert!(!src.contains('$'), "{shape:?}");
                    }
                    // The prefetch's registers cover every staging item of a stage: ceil
                    // (items / threads) per thread, each loaded and stored once.
                    let threads = subgroups * subgroup;
                    let x_items = tokens * units * if x16 { 4 } else { 8 };
                    for (load, store, items) in [
                        ("= coop_fetch_w(", "coop_put_w(r.", rows * units),
                        ("= coop_fetch_x(", "coop_put_x(r.", x_items),
                    ] {
                        let regs = items.div_ceil(threads) as usize;
                        assert_eq!(real.matches(load).count(), regs, "{shape:?} {load}");
                        assert_eq!(real.matches(store).count(), regs, "{shape:?} {store}");
                    }
                    assert!(real.contains(&format!("const COOP_FETCH: bool = {fetch};")));
                    let accumulators = (rows / 32 * shape.subgroup_tokens() / 16) as usize;
                    assert_eq!(real.matches("coopMultiplyAdd(").count(), accumulators);
                    assert_eq!(emulated.matches("emu_mul_add(lane, ").count(), accumulators);
                    assert!(!emulated.contains("coop_mat16x16"), "{shape:?}");
                }
            }
        }
    }

    #[test]
    fn tall_rows_are_one_count_unless_given() {
        assert_eq!(parse("").unwrap().tall_rows(), TALL_MATVEC_ROWS);
        assert_eq!(parse("tall=2048").unwrap().tall_rows(), 2048);
    }

    #[test]
    fn tuning_values_are_read_and_bad_ones_named() {
        let t = parse(" units=2 , tall=2048").unwrap();
        assert_eq!((t.units, t.tall_rows, t.checks), (2, Some(2048), false));
        let t = parse("checks=1,submit=16,dp4a=1").unwrap();
        assert_eq!(
            (t.units, t.tall_rows, t.checks, t.submit_layers, t.dp4a),
            (1, None, true, 16, true)
        );
        assert!(!parse("dp4a=0").unwrap().dp4a);
        assert_eq!(parse("attn=512").unwrap().attn_groups, 512);
        assert_eq!(parse("").unwrap().attention_max_chunks(), 32);
        assert_eq!(parse("chunks=128").unwrap().attention_max_chunks(), 128);
        assert!(parse("chunks=129").is_err() && parse("chunks=0").is_err());
        assert_eq!(parse("batch=1").unwrap().matvec_tokens, 1);
        let t = parse("multi=0,cols=4,mrows=4").unwrap();
        assert_eq!((t.multi, t.multi_cols, t.multi_rows), (false, 4, 4));
        assert!(parse("").unwrap().quantize_once);
        assert!(!parse("xq=0").unwrap().quantize_once);
        assert!(parse("").unwrap().fused_quantize);
        assert!(!parse("fuseq=0").unwrap().fused_quantize);
        assert!(parse("").unwrap().head_int8);
        assert!(!parse("headq=0").unwrap().head_int8);
        assert!(parse("").unwrap().x16_fuse);
        assert!(!parse("x16fuse=0").unwrap().x16_fuse);
        let t = parse("").unwrap();
        assert_eq!((t.multi, t.multi_cols, t.multi_rows), (true, 8, 4));
        assert_eq!(parse("").unwrap().matvec_tokens, MATVEC_MAX_TOKENS);
        assert_eq!(parse("prefill=rows").unwrap().prefill, Prefill::Rows);
        assert_eq!(parse("prefill=coop").unwrap().prefill, Prefill::Coop);
        assert_eq!(
            parse("prefill=coop-emulated").unwrap().prefill,
            Prefill::CoopEmulated
        );
        assert_eq!(
            parse("prefill=rows, prefill = tiled").unwrap().prefill,
            Prefill::Tiled
        );
        let t = parse("").unwrap();
        assert_eq!(
            (t.units, t.tall_rows, t.checks, t.prefill),
            (1, None, false, Prefill::Auto)
        );
        for bad in [
            "units=3",
            "tall=0",
            "tall=x",
            "units",
            "speed=1",
            "checks=2",
            "submit=0",
            "dp4a=2",
            "attn=0",
            "batch=0",
            "multi=2",
            "cols=0",
            "cols=9",
            "mrows=16",
            "xq=2",
            "fuseq=2",
            "headq=2",
            "prefill=1",
            "prefill=tile",
            "prefill=auto",
            "prefill=",
            "coopk=0",
            "coopk=3",
            "coopk=8",
            "coopvec=1",
            "coopvec=8",
            "coopx16=2",
            "x16fuse=2",
            "cooptile=32",
            "cooptile=96",
            "cooptile=256",
            "cooptile=128x16",
            "cooptile=128x256",
            "cooptile=64x",
            "cooptile=x64",
            "cooptile=",
            "coopsg=2",
            "coopsg=16",
            "coopbuf=0",
            "coopbuf=3",
            "mvwg=96",
            "mvwg=32",
            "mvwg=512",
            "mvwg=",
            "mvwg=fast",
            "coopfetch=2",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("kernel setting") && err.contains("expected units=1|2"),
                "{bad}: {err}"
            );
        }
        let err = parse("mvwg=96").unwrap_err();
        assert!(
            err.contains("\"mvwg=96\"") && err.contains("mvwg=64|128|256|auto"),
            "{err}"
        );
    }

    #[test]
    fn decode_workgroup_threads_are_read_and_follow_the_rows() {
        assert_eq!(parse("").unwrap().tall_threads, MatvecThreads::Auto);
        for n in MATVEC_THREADS {
            let t = parse(&format!("mvwg={n}")).unwrap();
            assert_eq!(t.tall_threads, MatvecThreads::Fixed(n));
            assert_eq!(t.tall_threads.for_k(576), n);
        }
        // auto: every thread has at least one unit of k, up to 128 threads.
        let auto = parse("mvwg=auto").unwrap().tall_threads;
        assert_eq!(auto, MatvecThreads::Auto);
        for (k, threads) in [
            (576, 64),
            (2048, 64),
            (4095, 64),
            (4096, 128),
            (6144, 128),
            (8192, 128),
            (14336, 128),
        ] {
            assert_eq!(auto.for_k(k), threads, "k = {k}");
        }
        assert_eq!(auto.all(), vec![64, 128]);
    }
}
