//! The part of a model on one device: a contiguous range of layers with their weights and
//! KV cache, the buffers of a pass, and the embedding (first device) or the output head
//! (last device). A model on one device is one stage holding everything.

use std::ops::Range;

use super::*;

/// The final norm and the output product, on the last device.
pub(super) struct Head {
    final_norm: wgpu::BindGroup,
    output: MatmulOp,
    /// The output product of a step with several logit rows (a batched decode step) with
    /// int8 x (`headq=1`, where the weight type has int8 products): a step's head is its
    /// largest single product, and f32 x made it the most expensive kernel of a batched step.
    /// `None` where it would be `output`.
    output_int8: Option<MatmulOp>,
    /// The output product for a one-token step: RMSNorm fused, reading the hidden state.
    output_fused: MatmulOp,
    /// The greedy token of each logit row, into `picks`.
    argmax: wgpu::BindGroup,
}

/// A decode attention kernel other than `attention`: `attention_grouped` (`gqa=1`) or
/// `attention_vec` (`dattn=1`, a workgroup per query head or, with `gqa=1`, per K/V head).
struct DecodeAttention {
    pipeline: wgpu::ComputePipeline,
    /// Its name in profiles.
    label: &'static str,
    /// One workgroup per K/V head (else per query head) for each (token, chunk).
    per_kv_head: bool,
    /// Positions of its tile, of which chunks are a multiple.
    tile: usize,
}

impl DecodeAttention {
    /// The kernel the tuning asks for a model of `nh` query heads over `nkv` K/V heads, if
    /// not `attention`.
    fn choose(
        gpu: &Gpu,
        kernels: &Kernels,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<Option<DecodeAttention>, VulkanError> {
        let grouped = kernels.grouped_attention_for(nh, nkv);
        let group = if grouped { nh / nkv } else { 1 };
        let (pipeline, label, tile) = match (kernels.vec_attention(), grouped) {
            (true, _) => {
                let limits = gpu.limits();
                let threads = attention_vec_threads(
                    kernels.vec_attention_threads(),
                    group,
                    limits.max_compute_invocations_per_workgroup as usize,
                    limits.max_compute_workgroup_storage_size as usize,
                );
                if threads < kernels.vec_attention_threads() {
                    tracing::info!(
                        "dwg={}: attention_vec runs {threads} threads a workgroup of {group} heads, the most this adapter's workgroup size and memory allow",
                        kernels.vec_attention_threads()
                    );
                }
                let label = if grouped {
                    "attention vec grouped"
                } else {
                    "attention vec"
                };
                (
                    kernels.attention_vec(gpu, group, threads)?,
                    label,
                    attention_vec_tile(hd, threads),
                )
            }
            (false, true) => (
                kernels.attention_grouped(gpu, group)?,
                "attention grouped",
                attention_tile(hd),
            ),
            (false, false) => return Ok(None),
        };
        Ok(Some(DecodeAttention {
            pipeline,
            label,
            per_kv_head: grouped,
            tile,
        }))
    }
}

pub(super) struct Stage {
    pub(super) gpu: Gpu,
    kernels: Kernels,
    /// The model's layers this device runs.
    pub(super) layer_range: Range<usize>,
    ids: wgpu::Buffer,
    /// Per token of a step: (position in its sequence, first cache position of its slot).
    rows: wgpu::Buffer,
    /// The tokens whose logits a step computes (each sequence's last), as indices into the step.
    logit_rows: wgpu::Buffer,
    step: wgpu::Buffer,
    /// The query tiles of a step that runs `attention_tiled` (see `attention_query_tiles`).
    attn_tiles: wgpu::Buffer,
    /// The residual stream of a pass's tokens: the embedding's output on the first device,
    /// the previous device's handoff on the others.
    pub(super) hidden: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// The rows of logits a caller reads in full, in chunk order (see `logits_copy`).
    pub(super) staging: wgpu::Buffer,
    /// The greedy token of each logit row of a pass (last device only: written by the
    /// head's argmax), and their host-readable copy, one per chunk of the call.
    picks: wgpu::Buffer,
    pub(super) picks_staging: wgpu::Buffer,
    /// First device only.
    embed: Option<GetRowsOp>,
    /// Scaling of the embeddings (Gemma).
    embed_scale: Option<wgpu::BindGroup>,
    layers: Vec<LayerOps>,
    /// The decode attention kernel when it is not `attention`: with the query heads of a K/V
    /// head in one workgroup (`gqa=1`, see `KernelTuning::grouped_attention_for`) and/or
    /// with coalesced K loads (`dattn=1`); `None`: decode steps run `attention`.
    decode_attention: Option<DecodeAttention>,
    /// Prompt attention on cooperative matrices, where `pattn=2` asks for it and the device
    /// and model run it (see `Kernels::attention_coop`); `None`: steps of prompt size run
    /// `attention_tiled`.
    attention_coop: Option<wgpu::ComputePipeline>,
    /// `attention_coop` writing its output as the attention output product's f16 x, where
    /// `x16fuse=1` asks for it (see `Kernels::attention_coop_x16`): a prompt step then runs
    /// that product without its conversion.
    attention_coop_x16: Option<wgpu::ComputePipeline>,
    /// Query rows per workgroup of the prompt attention kernel that runs (`attention_coop`
    /// or `attention_tiled`): the rows of each query tile (see `attention_query_tiles`).
    attn_tile_rows: usize,
    /// Last device only.
    head: Option<Head>,
    /// Every device but the last: the host-readable copy of the hidden state that the next
    /// device continues from.
    pub(super) handoff: Option<wgpu::Buffer>,
    /// The work of a step of this shape, recorded ahead (see `forward_batch`). Its inputs
    /// (token ids, rows, step uniform, handed-on hidden state) are written when it is
    /// submitted. With its dispatch count.
    pub(super) next_step: Option<(PassShape, wgpu::CommandBuffer, usize)>,
    /// Bytes of weight matrices read per decoded token on this device.
    pub(super) weight_bytes: u64,
    /// Bytes of this device's KV cache.
    pub(super) kv_bytes: u64,
}

impl Stage {
    /// Uploads the layers `layer_range` of the model (and the embedding when `first`, the
    /// output head when `last`) to `gpu`, with a KV cache of `slots` sequences of `ctx`
    /// positions and the buffers of passes of up to `max_batch` tokens.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        gguf: &mut GgufReader<'_>,
        cfg: &LlamaConfig,
        types: &[WeightType],
        gpu: Gpu,
        layer_range: Range<usize>,
        ctx: usize,
        slots: usize,
        max_batch: usize,
    ) -> Result<Stage, VulkanError> {
        let first = layer_range.start == 0;
        let last = layer_range.end == cfg.n_layer;
        let kernels = Kernels::new(&gpu, types)?;
        let (d, hd, nh, nkv, ff) = (
            cfg.n_embd,
            cfg.head_dim,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.n_ff,
        );

        let f = 4u64;
        let b = max_batch as u64;
        let ids = gpu.storage("token ids", b * 4)?;
        let rows = gpu.storage("token positions and slots", b * 8)?;
        let logit_rows = gpu.storage("logit rows", slots as u64 * 4)?;
        let step = gpu.uniform_init(
            "step",
            bytemuck::bytes_of(&StepParams {
                n_tokens: 0,
                out_rows: 0,
                attn_chunks: 1,
                attn_chunk_len: 1,
            }),
        )?;
        let hidden = gpu.storage("hidden", b * d as u64 * f)?;
        let normed = gpu.storage("normed", b * d as u64 * f)?;
        let qkv_width = (nh + 2 * nkv) * hd;
        let qkv = gpu.storage("q|k|v", b * qkv_width as u64 * f)?;
        let attn = gpu.storage("attention out", b * (nh * hd) as u64 * f)?;
        let gate_up = gpu.storage("ffn gate|up", b * 2 * ff as u64 * f)?;
        let act = gpu.storage("ffn activation", b * ff as u64 * f)?;
        // Per sequence of a step: its last token's normalised hidden state and logits.
        let s = slots as u64;
        let last_hidden = gpu.storage("last hidden", s * d as u64 * f)?;
        let logits = gpu.storage("logits", s * cfg.vocab as u64 * f)?;
        let staging = gpu.buffer_map_read("logits staging", s * cfg.vocab as u64 * f)?;
        let picks = gpu.storage("greedy tokens", s * 4)?;
        let picks_staging = gpu.buffer_map_read("greedy tokens staging", s * 4)?;
        // Sliding-window layers rotate with their own base (and no frequency factors).
        let swa_rope_table = match &cfg.sliding_window {
            Some(swa) => Some(gpu.storage_init(
                "rope cos/sin (sliding-window layers)",
                bytemuck::cast_slice(&rope_table(ctx, hd, swa.rope_base, None)),
            )?),
            None => None,
        };
        let table = rope_table(ctx, hd, cfg.rope_base, cfg.rope_freq_factors.as_deref());
        let rope_table = gpu.storage_init("rope cos/sin", bytemuck::cast_slice(&table))?;
        // f16 K and V values: per K/V head, the slots' positions one after another.
        let cache_positions = slots * ctx;
        let cache_bytes = (nkv * cache_positions * hd) as u64 * 2;

        let mut weight_bytes = 0u64;
        // Models with tied embeddings (SmolLM2) have no output.weight: the last device then
        // holds its own copy of the embedding matrix for the output head.
        let tied = !gguf.has("output.weight");
        let embd = if first || (last && tied) {
            Some(gguf.matrix(&gpu, "token_embd.weight", cfg.vocab, d)?)
        } else {
            None
        };
        let embed = match (&embd, first) {
            (Some(w), true) => Some(GetRowsOp::new(&gpu, &kernels, w, &ids, &hidden, &step)?),
            _ => None,
        };
        let elementwise = |label: &str,
                           pipeline: &wgpu::ComputePipeline,
                           x: &wgpu::Buffer,
                           bias: Option<&wgpu::Buffer>,
                           params: ElementwiseParams|
         -> Result<wgpu::BindGroup, VulkanError> {
            let ubuf = gpu.uniform_init(label, bytemuck::bytes_of(&params))?;
            let mut entries = vec![(0, x), (2, &ubuf), (3, &step)];
            if let Some(b) = bias {
                entries.push((1, b));
            }
            Ok(kernels::bind(&gpu, pipeline, label, &entries))
        };
        let embed_scale = match cfg.embedding_scale.filter(|_| first) {
            Some(factor) => Some(elementwise(
                "embedding scale",
                &kernels.scale,
                &hidden,
                None,
                ElementwiseParams {
                    width: d as u32,
                    offset: 0,
                    stride: d as u32,
                    factor,
                },
            )?),
            None => None,
        };
        // Partial results of split attention: hd + 4 floats per (token, chunk, head) slot (the
        // output, then a vec4 holding its max and sum), for the largest number of slots any
        // batch size can need.
        let part_slots = attention_partial_slots(
            max_batch,
            nh,
            nkv,
            kernels.attention_groups(),
            kernels.attention_max_chunks(),
        );
        let decode_attention = DecodeAttention::choose(&gpu, &kernels, nh, nkv, hd)?;
        let attn_part = gpu.storage("attention partials", (part_slots * (hd + 4)) as u64 * f)?;
        let attention_coop = kernels.attention_coop(&gpu, hd)?;
        let attention_coop_x16 = kernels.attention_coop_x16(&gpu, hd)?;
        let attn_tile_rows = if attention_coop.is_some() {
            ATTENTION_COOP_ROWS
        } else {
            attention_tiled_rows(hd)
        };
        // The query tiles of `attention_tiled` or `attention_coop` (two u32 each), for a pass
        // of max_batch tokens of up to max_batch sequences.
        let tile_count = attention_tiled_groups(max_batch, max_batch, nh / nkv, attn_tile_rows);
        let attn_tiles = gpu.storage("attention query tiles", tile_count as u64 * 8)?;

        let norm_op = |name: &str,
                       weights: &[f32],
                       x: &wgpu::Buffer,
                       y: &wgpu::Buffer,
                       accumulate: bool|
         -> Result<(wgpu::BindGroup, wgpu::Buffer), VulkanError> {
            let wbuf = gpu.storage_init(name, bytemuck::cast_slice(weights))?;
            let params = NormParams::new(d, cfg.rms_eps, accumulate);
            let ubuf = gpu.uniform_init("norm params", bytemuck::bytes_of(&params))?;
            let bg = kernels::bind(
                &gpu,
                &kernels.rmsnorm,
                name,
                &[(0, x), (1, &wbuf), (2, y), (3, &ubuf)],
            );
            Ok((bg, wbuf))
        };
        let residual = MatmulMode {
            accumulate: true,
            ..MatmulMode::default()
        };

        let mut layers = Vec::with_capacity(layer_range.len());
        for l in layer_range.clone() {
            let p = |s: &str| format!("blk.{l}.{s}");
            let attn_norm_w = gguf.vector(&p("attn_norm.weight"), d)?;
            let ffn_norm_w = gguf.vector(&p("ffn_norm.weight"), d)?;
            // Phi-3 stores q|k|v as one matrix; the others as three, uploaded side by side.
            let qkv_w = if gguf.has(&p("attn_qkv.weight")) {
                vec![(gguf.matrix(&gpu, &p("attn_qkv.weight"), qkv_width, d)?, 0)]
            } else {
                gguf.side_by_side(
                    &gpu,
                    &p("attn_qkv"),
                    &[
                        (p("attn_q.weight"), nh * hd),
                        (p("attn_k.weight"), nkv * hd),
                        (p("attn_v.weight"), nkv * hd),
                    ],
                    d,
                    false,
                )?
            };
            // Qwen2's biases, as one [q | k | v] vector (a missing part is zero).
            let qkv_bias = if gguf.has(&p("attn_q.bias")) {
                let mut bias = Vec::with_capacity(qkv_width);
                for (part, len) in [
                    ("attn_q.bias", nh * hd),
                    ("attn_k.bias", nkv * hd),
                    ("attn_v.bias", nkv * hd),
                ] {
                    if gguf.has(&p(part)) {
                        bias.extend(gguf.vector(&p(part), len)?);
                    } else {
                        bias.resize(bias.len() + len, 0.0);
                    }
                }
                let buf = gpu.storage_init(&p("attn_qkv.bias"), bytemuck::cast_slice(&bias))?;
                Some(elementwise(
                    "q|k|v bias",
                    &kernels.add_bias,
                    &qkv,
                    Some(&buf),
                    ElementwiseParams {
                        width: qkv_width as u32,
                        offset: 0,
                        stride: qkv_width as u32,
                        factor: 1.0,
                    },
                )?)
            } else {
                None
            };
            // Per-head RMSNorm of q and k (Qwen3, Gemma 3), in place in the q|k|v rows.
            let qk_norm = if gguf.has(&p("attn_q_norm.weight")) {
                let mut groups = Vec::with_capacity(2);
                for (part, offset, heads) in [
                    ("attn_q_norm.weight", 0, nh),
                    ("attn_k_norm.weight", nh * hd, nkv),
                ] {
                    let w = gguf.vector(&p(part), hd)?;
                    let wbuf = gpu.storage_init(&p(part), bytemuck::cast_slice(&w))?;
                    let params = HeadNormParams {
                        hd: hd as u32,
                        heads: heads as u32,
                        offset: offset as u32,
                        stride: qkv_width as u32,
                        eps: cfg.rms_eps,
                        _pad: [0; 3],
                    };
                    let ubuf = gpu.uniform_init("head norm params", bytemuck::bytes_of(&params))?;
                    groups.push(kernels::bind(
                        &gpu,
                        &kernels.head_rmsnorm,
                        part,
                        &[(0, &qkv), (1, &wbuf), (2, &ubuf)],
                    ));
                }
                let [q, k]: [wgpu::BindGroup; 2] = groups.try_into().expect("two norms");
                Some([q, k])
            } else {
                None
            };
            // Gemma's norms of the attention and FFN outputs: the products then write
            // `normed`, and the norm adds into the hidden state.
            let post_norms = gguf.has(&p("post_attention_norm.weight"));
            let (mut post_attn_norm, mut post_ffn_norm) = (None, None);
            if post_norms {
                for (name, slot) in [
                    ("post_attention_norm.weight", &mut post_attn_norm),
                    ("post_ffw_norm.weight", &mut post_ffn_norm),
                ] {
                    let w = gguf.vector(&p(name), d)?;
                    *slot = Some(norm_op(&p(name), &w, &normed, &hidden, true)?.0);
                }
            }
            let (out_target, out_mode) = if post_norms {
                (&normed, MatmulMode::default())
            } else {
                (&hidden, residual)
            };
            let wo = gguf.matrix(&gpu, &p("attn_output.weight"), d, nh * hd)?;
            // Interleaved rows when gate and up are one matrix: a decode step's gate|up product
            // then does SiLU·mul itself (`matvec_norm_glu`). Phi-3 stores them as one.
            let gate_up_w = if gguf.has(&p("ffn_gate.weight")) {
                gguf.side_by_side(
                    &gpu,
                    &p("ffn_gate_up"),
                    &[(p("ffn_gate.weight"), ff), (p("ffn_up.weight"), ff)],
                    d,
                    true,
                )?
            } else {
                vec![(
                    gguf.interleaved_halves(&gpu, &p("ffn_up.weight"), ff, d)?,
                    0,
                )]
            };
            // The fused epilogues compute SiLU only; GeGLU runs its own kernel.
            let glu_fused = !cfg.gelu && gate_up_w.len() == 1 && gate_up_w[0].0.pairs_in_chunks();
            let wd = gguf.matrix(&gpu, &p("ffn_down.weight"), d, ff)?;
            for w in qkv_w
                .iter()
                .chain(&gate_up_w)
                .map(|(w, _)| w)
                .chain([&wo, &wd])
            {
                weight_bytes += (w.rows * w.ty.row_bytes(w.k)) as u64;
            }
            let (attn_norm, attn_norm_buf) =
                norm_op(&p("attn_norm"), &attn_norm_w, &hidden, &normed, false)?;
            let (ffn_norm, ffn_norm_buf) =
                norm_op(&p("ffn_norm"), &ffn_norm_w, &hidden, &normed, false)?;
            // The epilogue a decode step's fused product adds after the RMSNorm and the product.
            enum Epilogue<'b> {
                None,
                Rope(RopeBuffers<'b>),
                Glu(&'b wgpu::Buffer),
            }
            let side_by_side_ops = |label: &'static str,
                                    parts: &[(GpuWeight, u32)],
                                    y: &wgpu::Buffer,
                                    stride: usize,
                                    norm_w: &wgpu::Buffer,
                                    epilogue: Epilogue<'_>|
             -> Result<Vec<MatmulOp>, VulkanError> {
                // One op over all parts: the decode product is one (mixed) dispatch where
                // the parts allow it (see MatmulOp::new_parts).
                let parts: Vec<(&GpuWeight, u32)> = parts.iter().map(|(w, o)| (w, *o)).collect();
                let mode = MatmulMode {
                    out_stride: stride as u32,
                    ..MatmulMode::default()
                };
                let (x, weight, eps) = (&hidden, norm_w, cfg.rms_eps);
                let fused = match epilogue {
                    Epilogue::Rope(rope) => FusedInput::NormRope {
                        x,
                        weight,
                        eps,
                        rope,
                    },
                    Epilogue::Glu(act) => FusedInput::NormGlu {
                        x,
                        weight,
                        eps,
                        act,
                    },
                    Epilogue::None => FusedInput::Norm { x, weight, eps },
                };
                Ok(vec![MatmulOp::new_parts(
                    &gpu,
                    &kernels,
                    label,
                    &parts,
                    &normed,
                    y,
                    &step,
                    mode,
                    Some(fused),
                )?])
            };
            let kcache = gpu.storage(&format!("k cache {l}"), cache_bytes)?;
            let vcache = gpu.storage(&format!("v cache {l}"), cache_bytes)?;
            let rope_params = RopeParams {
                n_head: nh as u32,
                n_kv: nkv as u32,
                hd: hd as u32,
                neox: cfg.rope_neox as u32,
                cache_base: 0,
                ctx: cache_positions as u32,
                _pad: [0; 2],
            };
            let rope_u = gpu.uniform_init("rope params", bytemuck::bytes_of(&rope_params))?;
            let sliding = cfg.sliding_window.as_ref().filter(|swa| swa.layers[l]);
            let layer_rope_table = match (sliding, &swa_rope_table) {
                (Some(_), Some(table)) => table,
                _ => &rope_table,
            };
            let mut attn_params = AttnParams::new(nh, nkv, hd, cache_positions);
            attn_params.window = sliding.map_or(0, |swa| swa.window as u32);
            let attn_u = gpu.uniform_init("attention params", bytemuck::bytes_of(&attn_params))?;
            // The decode attention kernels (per query head, or grouped by K/V head) bind the
            // same buffers.
            let attention_entries = [
                (0, &qkv),
                (1, &kcache),
                (2, &vcache),
                (3, &attn),
                (4, &attn_u),
                (5, &step),
                (6, &attn_part),
                (7, &rows),
            ];
            // Both prompt attention kernels (plain or cooperative) bind the same buffers.
            let tiled_attention_entries = [
                (0, &qkv),
                (1, &kcache),
                (2, &vcache),
                (3, &attn),
                (4, &attn_u),
                (7, &rows),
                (8, &attn_tiles),
            ];
            let o = MatmulOp::new(
                &gpu,
                &kernels,
                "attn_output",
                &wo,
                &attn,
                out_target,
                &step,
                out_mode,
                None,
            )?;
            let interleaved = gate_up_w.len() == 1;
            let silu_u = gpu.uniform_init(
                "silu params",
                bytemuck::bytes_of(&EltParams {
                    n: ff as u32,
                    interleaved: interleaved as u32,
                    gelu: cfg.gelu as u32,
                    _pad: 0,
                }),
            )?;
            // A decode step rotates q and k and stores k and v in the q|k|v product itself when
            // it is one matrix with interleaved pairs that never straddle a chunk.
            // Biases and q/k norms come between the product and RoPE, so not then.
            let qkv_rope = !cfg.rope_neox
                && qkv_bias.is_none()
                && qk_norm.is_none()
                && crate::quant::one_decode_dispatch(&kernels, &qkv_w);
            let rope_buffers = RopeBuffers {
                kcache: &kcache,
                vcache: &vcache,
                cos_sin: layer_rope_table,
                params: &rope_u,
                rows: &rows,
            };
            layers.push(LayerOps {
                attn_norm,
                qkv: side_by_side_ops(
                    "q|k|v",
                    &qkv_w,
                    &qkv,
                    qkv_width,
                    &attn_norm_buf,
                    if qkv_rope {
                        Epilogue::Rope(rope_buffers)
                    } else {
                        Epilogue::None
                    },
                )?,
                qkv_rope,
                qkv_bias,
                qk_norm,
                post_attn_norm,
                post_ffn_norm,
                rope: kernels::bind(
                    &gpu,
                    &kernels.rope,
                    "rope",
                    &[
                        (0, &qkv),
                        (1, &kcache),
                        (2, &vcache),
                        (3, layer_rope_table),
                        (4, &rope_u),
                        (5, &step),
                        (6, &rows),
                    ],
                ),
                attention: kernels::bind(&gpu, &kernels.attention, "attention", &attention_entries),
                attention_combine: kernels::bind(
                    &gpu,
                    &kernels.attention_combine,
                    "attention combine",
                    &[(3, &attn), (4, &attn_u), (5, &step), (6, &attn_part)],
                ),
                decode_attention: decode_attention
                    .as_ref()
                    .map(|a| kernels::bind(&gpu, &a.pipeline, a.label, &attention_entries)),
                attention_tiled: kernels::bind(
                    &gpu,
                    &kernels.attention_tiled,
                    "attention tiled",
                    &tiled_attention_entries,
                ),
                attention_coop: attention_coop.as_ref().map(|pipeline| {
                    kernels::bind(&gpu, pipeline, "attention coop", &tiled_attention_entries)
                }),
                attention_coop_x16: match (&attention_coop_x16, o.x16_input()) {
                    (Some(pipeline), Some(x16)) => {
                        // Its output goes to x16 instead of `attn` (binding 3).
                        let mut entries: Vec<_> = tiled_attention_entries
                            .iter()
                            .copied()
                            .filter(|(binding, _)| *binding != 3)
                            .collect();
                        entries.push((16, x16));
                        Some(kernels::bind(
                            &gpu,
                            pipeline,
                            "attention coop to f16 x",
                            &entries,
                        ))
                    }
                    _ => None,
                },
                o,
                ffn_norm,
                gate_up: side_by_side_ops(
                    "ffn gate|up",
                    &gate_up_w,
                    &gate_up,
                    2 * ff,
                    &ffn_norm_buf,
                    if glu_fused {
                        Epilogue::Glu(&act)
                    } else {
                        Epilogue::None
                    },
                )?,
                glu_fused,
                silu_mul: kernels::bind(
                    &gpu,
                    &kernels.silu_mul,
                    "silu_mul",
                    &[(0, &gate_up), (1, &act), (2, &silu_u), (3, &step)],
                ),
                // With gate and up as two matrices ([gate | up] side by side), a decode step's
                // down product does the SiLU·mul on its input; a multi-token step's does it
                // in the quantization of its int8 x, whatever the layout (GeGLU: never).
                down: MatmulOp::new(
                    &gpu,
                    &kernels,
                    "ffn_down",
                    &wd,
                    &act,
                    out_target,
                    &step,
                    out_mode,
                    (!cfg.gelu).then_some(FusedInput::Glu {
                        x: &gate_up,
                        interleaved,
                    }),
                )?,
            });
        }
        let head = if last {
            let out_norm_w = gguf.vector("output_norm.weight", d)?;
            let final_norm_buf =
                gpu.storage_init("output_norm", bytemuck::cast_slice(&out_norm_w))?;
            let final_norm_u = gpu.uniform_init(
                "norm params",
                bytemuck::bytes_of(&NormParams::new(d, cfg.rms_eps, false)),
            )?;
            // The final norm of the rows whose logits are wanted, into `last` in their order.
            let final_norm = kernels::bind(
                &gpu,
                &kernels.rmsnorm_rows,
                "output_norm",
                &[
                    (0, &hidden),
                    (1, &final_norm_buf),
                    (2, &last_hidden),
                    (3, &final_norm_u),
                    (5, &logit_rows),
                ],
            );
            // Models with tied embeddings (SmolLM2) have no output.weight.
            let out_w = match embd.filter(|_| tied) {
                Some(embd) => embd,
                None => gguf.matrix(&gpu, "output.weight", cfg.vocab, d)?,
            };
            weight_bytes += (out_w.rows * out_w.ty.row_bytes(out_w.k)) as u64;
            let head_mode = MatmulMode {
                logit_rows: true,
                exact_input: true,
                ..MatmulMode::default()
            };
            let output = MatmulOp::new(
                &gpu,
                &kernels,
                "output",
                &out_w,
                &last_hidden,
                &logits,
                &step,
                head_mode,
                None,
            )?;
            let output_int8 = if kernels.head_int8(out_w.ty) {
                Some(MatmulOp::new(
                    &gpu,
                    &kernels,
                    "output",
                    &out_w,
                    &last_hidden,
                    &logits,
                    &step,
                    MatmulMode {
                        exact_input: false,
                        ..head_mode
                    },
                    None,
                )?)
            } else {
                None
            };
            let fused = FusedInput::Norm {
                x: &hidden,
                weight: &final_norm_buf,
                eps: cfg.rms_eps,
            };
            let output_fused = MatmulOp::new(
                &gpu,
                &kernels,
                "output",
                &out_w,
                &hidden,
                &logits,
                &step,
                head_mode,
                Some(fused),
            )?;
            let argmax_u = gpu.uniform_init(
                "argmax params",
                bytemuck::bytes_of(&ArgmaxParams {
                    n: cfg.vocab as u32,
                    _pad: [0; 3],
                }),
            )?;
            let argmax = kernels::bind(
                &gpu,
                &kernels.argmax_rows,
                "argmax",
                &[(0, &logits), (1, &picks), (2, &argmax_u)],
            );
            Some(Head {
                final_norm,
                output,
                output_int8,
                output_fused,
                argmax,
            })
        } else {
            None
        };
        // What a device before the last hands on: the hidden state of a pass's tokens.
        let handoff = if last {
            None
        } else {
            Some(gpu.buffer_map_read("hidden state handoff", b * d as u64 * f)?)
        };
        gpu.wait("uploading the weights")?;
        tracing::info!(
            adapter = %gpu.description(),
            layers = ?layer_range,
            embedding = first,
            output = last,
            ctx,
            slots,
            weight_bytes,
            "model part loaded on the Vulkan device"
        );
        Ok(Stage {
            kv_bytes: 2 * layer_range.len() as u64 * cache_bytes,
            gpu,
            kernels,
            layer_range,
            ids,
            rows,
            logit_rows,
            step,
            attn_tiles,
            hidden,
            logits,
            staging,
            picks,
            picks_staging,
            embed,
            embed_scale,
            layers,
            decode_attention,
            attention_coop,
            attention_coop_x16,
            attn_tile_rows,
            head,
            handoff,
            next_step: None,
            weight_bytes,
        })
    }

    /// Whether steps of prompt size run `attention_coop` (else `attention_tiled`).
    pub(super) fn runs_coop_attention(&self) -> bool {
        self.attention_coop.is_some()
    }

    /// Workgroups of decode attention per (token, chunk): one per K/V head with
    /// `attention_grouped` (and `attention_vec` with `gqa=1`), one per query head with
    /// `attention` (see `attention_split`).
    fn attention_heads(&self, c: &LlamaConfig) -> usize {
        if self
            .decode_attention
            .as_ref()
            .is_some_and(|a| a.per_kv_head)
        {
            c.n_kv_head
        } else {
            c.n_head
        }
    }

    /// Positions of a tile of the decode attention kernel, of which chunks are a multiple.
    fn attention_tile(&self, c: &LlamaConfig) -> usize {
        self.decode_attention
            .as_ref()
            .map_or(attention_tile(c.head_dim), |a| a.tile)
    }

    /// Writes the inputs of a pass (token ids, rows, logit rows, step uniform, query tiles of
    /// `attention_tiled`): the per-step
    /// inputs of the recorded work, written before the submission that runs it.
    pub(super) fn write_step(&self, c: &LlamaConfig, pass: &PassInputs) {
        let shape = pass.shape();
        let queue = &self.gpu.queue;
        queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(&pass.ids));
        queue.write_buffer(&self.rows, 0, bytemuck::cast_slice(&pass.rows));
        if !pass.logit_rows.is_empty() {
            queue.write_buffer(&self.logit_rows, 0, bytemuck::cast_slice(&pass.logit_rows));
        }
        let (chunks, chunk_len) = attention_split(
            shape.tokens,
            shape.len,
            self.attention_heads(c),
            self.kernels.attention_groups(),
            self.kernels.attention_max_chunks_for(shape.len),
            self.attention_tile(c),
        );
        let step = StepParams {
            n_tokens: shape.tokens as u32,
            out_rows: shape.logit_rows as u32,
            attn_chunks: chunks as u32,
            attn_chunk_len: chunk_len as u32,
        };
        queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        if self.kernels.tiled_attention_for(shape.tokens, shape.runs) {
            let tiles =
                attention_query_tiles(&pass.rows, c.n_head / c.n_kv_head, self.attn_tile_rows);
            queue.write_buffer(&self.attn_tiles, 0, bytemuck::cast_slice(&tiles));
        }
    }

    /// Records the work of a pass of this shape (whose inputs `write_step` writes) and hands
    /// each command buffer to `sink` as soon as it is finished. On the last device it ends
    /// with the greedy token of each logit row, copied to `picks_staging` from row
    /// `first_row` on; the rows of logits wanted in full are copied by `logits_copy`, which
    /// depends on what the caller asks for and so is not part of the recorded pass (a pass
    /// recorded ahead serves callers of either kind). `split`: several command buffers, the first
    /// one small, so that a caller submitting each at once gets the GPU started early;
    /// otherwise one. A one-token pass uses the decode kernels: matrix-vector products with
    /// the RMSNorm and the SiLU·mul fused into their input, and attention split over
    /// positions.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_pass(
        &self,
        c: &LlamaConfig,
        shape: PassShape,
        first_row: usize,
        split: bool,
        mut timer: Option<&mut Timer>,
        mut sink: impl FnMut(wgpu::CommandBuffer),
    ) -> usize {
        let mut dispatched = 0;
        let n = shape.tokens;
        let read_logits = shape.logit_rows > 0;
        let decode = n == 1;
        let gpu = &self.gpu;
        let (chunks, _) = attention_split(
            n,
            shape.len,
            self.attention_heads(c),
            self.kernels.attention_groups(),
            self.kernels.attention_max_chunks_for(shape.len),
            self.attention_tile(c),
        );
        // Prompt-size steps: one workgroup per (rows of query tiles, K/V head), one chunk.
        let tiled_attention = self.kernels.tiled_attention_for(n, shape.runs);
        let group = c.n_head / c.n_kv_head;
        let tiled_attention_groups =
            attention_tiled_groups(n, shape.runs, group, self.attn_tile_rows) as u32;
        let rope_groups = elementwise_groups(n * (c.n_head + 2 * c.n_kv_head) * c.head_dim / 2);
        let elt_groups = |width: usize| elementwise_groups(n * width);
        let silu_groups = self.gpu.tuning().silu_groups(n * c.n_ff);
        let n = n as u32;
        // Layers per command buffer: the GPU starts on the first kernels::FIRST_SUBMIT_LAYERS
        // while the host records the next ones; each submission costs the GPU a gap.
        let groups: Vec<&[LayerOps]> = if split {
            let first_layers = kernels::FIRST_SUBMIT_LAYERS.min(self.layers.len());
            let (head, rest) = self.layers.split_at(first_layers);
            std::iter::once(head)
                .chain(rest.chunks(self.kernels.submit_layers))
                .collect()
        } else {
            vec![&self.layers[..]]
        };
        for (g, layers) in groups.iter().enumerate() {
            let first = g == 0;
            let last = g + 1 == groups.len();
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("forward"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("forward"),
                    timestamp_writes: None,
                });
                let mut rec = Recorder::new(
                    &mut pass,
                    timer.as_deref_mut(),
                    if first { "start" } else { "host gap" },
                );
                if let (true, Some(embed)) = (first, &self.embed) {
                    embed.record(&mut rec, n);
                    if let Some(bg) = &self.embed_scale {
                        rec.dispatch(
                            "embedding scale",
                            &self.kernels.scale,
                            bg,
                            [elt_groups(c.n_embd), 1, 1],
                        );
                    }
                }
                for layer in layers.iter() {
                    // One token: the norm fused into the product's input; a few tokens: into
                    // the quantization of x the products read (`norm_quantize_x`), where
                    // they read int8 x.
                    let fuse_qkv = layer.qkv.iter().all(|op| op.fuses_input(n));
                    if !fuse_qkv {
                        rec.dispatch(
                            "rmsnorm",
                            &self.kernels.rmsnorm,
                            &layer.attn_norm,
                            [n, 1, 1],
                        );
                    }
                    for op in &layer.qkv {
                        op.record(&mut rec, n, fuse_qkv);
                    }
                    if let Some(bg) = &layer.qkv_bias {
                        let width = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
                        rec.dispatch(
                            "q|k|v bias",
                            &self.kernels.add_bias,
                            bg,
                            [elt_groups(width), 1, 1],
                        );
                    }
                    if let Some([q_norm, k_norm]) = &layer.qk_norm {
                        rec.dispatch(
                            "q norm",
                            &self.kernels.head_rmsnorm,
                            q_norm,
                            [c.n_head as u32, n, 1],
                        );
                        rec.dispatch(
                            "k norm",
                            &self.kernels.head_rmsnorm,
                            k_norm,
                            [c.n_kv_head as u32, n, 1],
                        );
                    }
                    if !(decode && fuse_qkv && layer.qkv_rope) {
                        rec.dispatch(
                            "rope + kv store",
                            &self.kernels.rope,
                            &layer.rope,
                            [rope_groups, 1, 1],
                        );
                    }
                    // With `x16fuse=1`, the prompt attention on cooperative matrices writes
                    // the f16 x of the attention output product, which then skips its
                    // conversion.
                    let mut o_x16_written = false;
                    if let (true, Some(pipeline), Some(bg), true) = (
                        tiled_attention,
                        &self.attention_coop_x16,
                        &layer.attention_coop_x16,
                        layer.o.converts_x16(n),
                    ) {
                        rec.dispatch(
                            "attention coop to f16 x",
                            pipeline,
                            bg,
                            [tiled_attention_groups, c.n_kv_head as u32, 1],
                        );
                        o_x16_written = true;
                    } else if let (true, Some(pipeline), Some(bg)) =
                        (tiled_attention, &self.attention_coop, &layer.attention_coop)
                    {
                        rec.dispatch(
                            "attention coop",
                            pipeline,
                            bg,
                            [tiled_attention_groups, c.n_kv_head as u32, 1],
                        );
                    } else if tiled_attention {
                        rec.dispatch(
                            "attention tiled",
                            &self.kernels.attention_tiled,
                            &layer.attention_tiled,
                            [tiled_attention_groups, c.n_kv_head as u32, 1],
                        );
                    } else if let (Some(a), Some(bg)) =
                        (&self.decode_attention, &layer.decode_attention)
                    {
                        let blocks = if a.per_kv_head { c.n_kv_head } else { c.n_head };
                        rec.dispatch(a.label, &a.pipeline, bg, [blocks as u32, n, chunks as u32]);
                    } else {
                        rec.dispatch(
                            "attention",
                            &self.kernels.attention,
                            &layer.attention,
                            [c.n_head as u32, n, chunks as u32],
                        );
                    }
                    if chunks > 1 && !tiled_attention {
                        rec.dispatch(
                            "attention combine",
                            &self.kernels.attention_combine,
                            &layer.attention_combine,
                            [c.n_head as u32, n, 1],
                        );
                    }
                    if o_x16_written {
                        layer.o.record_x16_written(&mut rec, n);
                    } else {
                        layer.o.record(&mut rec, n, false);
                    }
                    if let Some(bg) = &layer.post_attn_norm {
                        rec.dispatch("post-attention norm", &self.kernels.rmsnorm, bg, [n, 1, 1]);
                    }
                    let fuse_gate_up = layer.gate_up.iter().all(|op| op.fuses_input(n));
                    if !fuse_gate_up {
                        rec.dispatch("rmsnorm", &self.kernels.rmsnorm, &layer.ffn_norm, [n, 1, 1]);
                    }
                    for op in &layer.gate_up {
                        op.record(&mut rec, n, fuse_gate_up);
                    }
                    // A decode step does SiLU·mul in the gate|up product or in the down product's
                    // input, unless the interleaved gate|up matrix has a chunk splitting a pair;
                    // a multi-token step in the quantization of the down product's int8 x.
                    let fuse_down = layer.down.fuses_input(n);
                    if !(fuse_down || (decode && layer.glu_fused)) {
                        rec.dispatch(
                            "silu_mul",
                            &self.kernels.silu_mul,
                            &layer.silu_mul,
                            [silu_groups, 1, 1],
                        );
                    }
                    layer.down.record(&mut rec, n, fuse_down);
                    if let Some(bg) = &layer.post_ffn_norm {
                        rec.dispatch("post-FFN norm", &self.kernels.rmsnorm, bg, [n, 1, 1]);
                    }
                }
                if let (true, true, Some(head)) = (last, read_logits, &self.head) {
                    let rows = shape.logit_rows as u32;
                    if decode {
                        head.output_fused.record(&mut rec, 1, true);
                    } else {
                        rec.dispatch(
                            "rmsnorm",
                            &self.kernels.rmsnorm_rows,
                            &head.final_norm,
                            [rows, 1, 1],
                        );
                        match &head.output_int8 {
                            Some(int8) if rows > 1 => int8.record(&mut rec, rows, false),
                            _ => head.output.record(&mut rec, rows, false),
                        }
                    }
                    rec.dispatch(
                        "argmax",
                        &self.kernels.argmax_rows,
                        &head.argmax,
                        [rows, 1, 1],
                    );
                }
                dispatched += rec.dispatched();
            }
            if let (true, Some(handoff)) = (last, &self.handoff) {
                let bytes = shape.tokens as u64 * c.n_embd as u64 * 4;
                enc.copy_buffer_to_buffer(&self.hidden, 0, handoff, 0, bytes);
            }
            if last && read_logits && self.head.is_some() {
                enc.copy_buffer_to_buffer(
                    &self.picks,
                    0,
                    &self.picks_staging,
                    first_row as u64 * 4,
                    shape.logit_rows as u64 * 4,
                );
            }
            sink(enc.finish());
        }
        dispatched
    }
}

impl Stage {
    /// The copy of whole rows of the last pass's logits to `staging`, as `(first row of the
    /// pass, first row of the staging buffer, rows)` runs, to submit after the pass and
    /// before the next one overwrites them; `None` when there is nothing to copy.
    pub(super) fn logits_copy(
        &self,
        vocab: usize,
        runs: &[(usize, usize, usize)],
    ) -> Option<wgpu::CommandBuffer> {
        if runs.is_empty() {
            return None;
        }
        let row_bytes = vocab as u64 * 4;
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("logits read-back"),
            });
        for &(from, to, rows) in runs {
            enc.copy_buffer_to_buffer(
                &self.logits,
                from as u64 * row_bytes,
                &self.staging,
                to as u64 * row_bytes,
                rows as u64 * row_bytes,
            );
        }
        Some(enc.finish())
    }
}
