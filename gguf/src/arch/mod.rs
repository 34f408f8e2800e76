//! What a model of each architecture is, read from a GGUF header: its hyper-parameters
//! and, per block, its tensors by role with the shapes they must have.
//!
//! Every engine and the runner's validation read the same [`ModelDesc`], so they cannot
//! disagree about which tensors a file must hold or what the metadata means. The
//! semantics follow llama.cpp b11434 (`src/models/*.cpp`, `llama-model.cpp`,
//! `llama-hparams.cpp`): the same keys, defaults, tensor names and per-architecture rules
//! (RoPE style, which layers slide, the query scaling, the embedding scale).
//!
//! Adding an architecture means adding one file here that defines its [`Architecture`]
//! and one line in [`ARCHITECTURES`].

mod gemma3;
mod llama;
mod meta;
mod phi3;
mod qwen2;
mod qwen3;

use candle_core::quantized::gguf_file::Content;

use meta::Meta;

/// Every architecture with a description, by its `general.architecture` name.
pub const ARCHITECTURES: &[&Architecture] = &[
    &llama::LLAMA,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &phi3::PHI3,
    &gemma3::GEMMA3,
];

/// The names of [`ARCHITECTURES`], for error messages: `llama, qwen2, ...`.
pub fn supported_architectures() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The description of architecture `name`, if there is one.
pub fn architecture(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.name == name)
}

/// How an architecture differs from the plain pre-norm llama block. One `const` per
/// architecture file.
#[derive(Debug)]
pub struct Architecture {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub name: &'static str,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Per-head RMSNorm of queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// The feed-forward input matrix is `ffn_up` holding gate and up stacked (gate's rows
    /// first), with no `ffn_gate`.
    pub fused_gate_up: bool,
    /// The token embeddings are multiplied by sqrt(n_embd).
    pub scale_embedding: bool,
    /// How sliding-window layers are chosen.
    pub sliding_window: SlidingWindowRule,
    /// The factor queries are multiplied by before attention.
    pub query_scale: fn(&HyperParams) -> f32,
    /// Which rope frequency factor tensors the architecture reads.
    pub rope_factors: RopeFactorsRule,
    /// `{arch}.final_logit_softcapping` applies (other architectures ignore the key).
    pub logit_softcap: bool,
    /// Files with `{arch}.expert_count` are mixtures of experts (their feed-forward
    /// weights are per expert; see [`FeedForward::Experts`]).
    pub allows_experts: bool,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): ggml's `LLAMA_ROPE_TYPE_NORM` (llama's converter
    /// permutes Q and K for it).
    Normal,
    /// Halves (i, i + rope_dim/2): ggml's `LLAMA_ROPE_TYPE_NEOX`.
    Neox,
}

/// The gated feed-forward activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with ggml's tanh approximation of GELU: `gelu_tanh(gate) * up`.
    GeluTanh,
}

/// How an architecture picks its sliding-window layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindowRule {
    /// Every layer attends to the whole context (a window in the metadata is ignored,
    /// as llama.cpp ignores Phi-3's).
    None,
    /// With `{arch}.attention.sliding_window` > 0, layer `il` slides when
    /// `il % period < period - 1`, where the period is
    /// `{arch}.attention.sliding_window_pattern` (default `default_period`), or the
    /// pattern is a per-layer boolean array; sliding layers use
    /// `{arch}.rope.freq_base_swa` (default 10000) and no rope scaling.
    Pattern { default_period: usize },
}

/// Which rope frequency factor tensors an architecture reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeFactorsRule {
    None,
    /// `rope_freqs.weight` (Llama 3.1+), or with rope scaling type `longrope`,
    /// `rope_factors_long/short.weight`.
    Freqs,
    /// `rope_factors_long.weight` and `rope_factors_short.weight` (Phi-3 LongRoPE).
    LongShort,
}

/// RoPE parameters of the full-attention layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Dimensions rotated per head (`rope.dimension_count`, default the head size).
    pub dim: usize,
    /// `rope.freq_base` (default 10000).
    pub base: f32,
    /// Positions are multiplied by this (1 / `rope.scaling.factor` for linear scaling).
    pub freq_scale: f32,
    /// cos and sin are multiplied by this (`rope.scaling.attn_factor`, default 1).
    pub attn_factor: f32,
    pub style: RopeStyle,
    /// The context the rope factors were trained for (`rope.scaling.original_context_length`,
    /// default the context length): above it, LongRoPE files use their long factors.
    pub original_context: usize,
}

/// The hyper-parameters, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct HyperParams {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    /// Size of a query/key head (`attention.key_length`, default n_embd / n_head).
    pub head_dim: usize,
    /// Size of a value head (`attention.value_length`, default n_embd / n_head); our
    /// engines need it equal to `head_dim`, which [`ModelDesc::read`] checks.
    pub value_dim: usize,
    pub n_layer: usize,
    /// Width of the feed-forward hidden layer (per expert for mixtures of experts).
    pub n_ff: usize,
    /// Rows of the token embedding.
    pub vocab: usize,
    /// The trained context (`context_length`).
    pub context_length: usize,
    pub rope: Rope,
    pub rms_eps: f32,
    /// Keys a sliding-window layer sees: the query's own position and the
    /// `sliding_window - 1` before it. `None`: no layer slides.
    pub sliding_window: Option<usize>,
    /// RoPE base of the sliding-window layers.
    pub swa_rope_base: f32,
    /// The token embeddings are multiplied by this (sqrt(n_embd) for Gemma).
    pub embedding_scale: Option<f32>,
    /// Queries are multiplied by this before the attention scores.
    pub query_scale: f32,
    /// `logits = cap * tanh(logits / cap)` (`final_logit_softcapping`).
    pub final_logit_softcap: Option<f32>,
    pub activation: Activation,
    /// Without `output.weight` the embedding matrix is the output matrix.
    pub tied_output: bool,
}

impl HyperParams {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbedding,
    OutputNorm,
    Output,
    OutputBias,
    RopeFreqs,
    RopeFactorsLong,
    RopeFactorsShort,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    /// Q, K and V stacked (rows of Q first, then K, then V).
    AttnQkv,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    AttnQkvBias,
    AttnQNorm,
    AttnKNorm,
    AttnOutput,
    AttnOutputBias,
    PostAttentionNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    /// Gate and up stacked (rows of gate first).
    FfnGateUp,
    FfnDown,
    FfnGateBias,
    FfnUpBias,
    FfnDownBias,
    PostFfwNorm,
    /// The router of a mixture of experts.
    FfnGateInput,
}

/// One tensor of the file: its name and the shape it must have, outermost dimension
/// first as candle shows it (`[rows, columns]` for a matrix, the reverse of GGUF's
/// order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    pub role: Role,
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorDesc {
    /// Rows of a matrix (the length of a vector).
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Columns of a matrix (1 for a vector).
    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

/// A matrix and the bias added to its output, if the file has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    pub weight: TensorDesc,
    pub bias: Option<TensorDesc>,
}

/// The attention's input projections.
// One value per layer, built once at load: the size difference costs nothing, and boxing
// the separate projections would only add an indirection for every reader.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QkvWeights {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One matrix of `q_dim + 2 * kv_dim` rows: Q's, then K's, then V's.
    Fused(Linear),
}

/// The feed-forward network of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedForward {
    /// `down(act(gate(x)) * up(x))`.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// The same with gate and up in one matrix of `2 * n_ff` rows, gate's first.
    FusedGateUp { gate_up: Linear, down: Linear },
    /// A mixture of experts: the router is listed, the per-expert weights are not
    /// (no engine of ours runs them).
    Experts {
        router: TensorDesc,
        count: usize,
        used: usize,
    },
}

/// One transformer block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub index: usize,
    /// The keys this layer's queries see beyond their own position, when it slides
    /// (see [`HyperParams::sliding_window`]).
    pub sliding_window: Option<usize>,
    /// RoPE base and position scale of this layer.
    pub rope_base: f32,
    pub rope_freq_scale: f32,
    pub attn_norm: TensorDesc,
    pub qkv: QkvWeights,
    pub q_norm: Option<TensorDesc>,
    pub k_norm: Option<TensorDesc>,
    pub attn_output: Linear,
    pub post_attention_norm: Option<TensorDesc>,
    pub ffn_norm: TensorDesc,
    pub ffn: FeedForward,
    pub post_ffw_norm: Option<TensorDesc>,
}

/// Rope frequency factors: each rotary pair's angle is divided by its factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RopeFactors {
    /// The same factors at every context length (`rope_freqs.weight`).
    Fixed(TensorDesc),
    /// LongRoPE: `short` up to [`Rope::original_context`], `long` above it.
    LongShort { long: TensorDesc, short: TensorDesc },
}

/// A whole model: what every engine needs to run a GGUF file.
#[derive(Debug, Clone)]
pub struct ModelDesc {
    pub arch: &'static Architecture,
    pub hparams: HyperParams,
    pub token_embd: TensorDesc,
    pub output_norm: TensorDesc,
    /// `output.weight`, or `token_embd.weight` when tied, and `output.bias` if any.
    pub output: Linear,
    pub rope_factors: Option<RopeFactors>,
    pub blocks: Vec<Block>,
}

/// Why a file does not describe a model we can run. Each message is one sentence that
/// names the key or tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    #[error("metadata lacks `general.architecture`")]
    NoArchitecture,
    #[error("unknown architecture `{0}`")]
    UnknownArchitecture(String),
    /// A metadata key is missing, of the wrong type or out of range.
    #[error("{0}")]
    Metadata(String),
    /// Hyper-parameters that contradict each other.
    #[error("{0}")]
    Inconsistent(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Something llama.cpp supports that this description does not.
    #[error("{0}")]
    Unsupported(String),
}

impl ModelDesc {
    /// Reads the description of the model in `content` and checks that every tensor it
    /// names is there with its shape.
    pub fn read(content: &Content) -> Result<ModelDesc, ArchError> {
        let name = crate::metadata_str(content, "general.architecture")
            .ok_or(ArchError::NoArchitecture)?;
        let arch =
            architecture(name).ok_or_else(|| ArchError::UnknownArchitecture(name.to_string()))?;
        let desc = Self::describe(content, arch)?;
        desc.check_tensors(content)?;
        Ok(desc)
    }

    /// Every tensor the description names (the tied output matrix once).
    pub fn tensors(&self) -> Vec<&TensorDesc> {
        let mut all = vec![&self.token_embd, &self.output_norm];
        if !self.hparams.tied_output {
            all.push(&self.output.weight);
        }
        all.extend(&self.output.bias);
        match &self.rope_factors {
            Some(RopeFactors::Fixed(t)) => all.push(t),
            Some(RopeFactors::LongShort { long, short }) => all.extend([long, short]),
            None => {}
        }
        for block in &self.blocks {
            block.push_tensors(&mut all);
        }
        all
    }

    /// The rope factors to use with a context of `context` tokens, if any.
    pub fn rope_factors_for(&self, context: usize) -> Option<&TensorDesc> {
        match self.rope_factors.as_ref()? {
            RopeFactors::Fixed(t) => Some(t),
            RopeFactors::LongShort { long, short } => {
                Some(if context > self.hparams.rope.original_context {
                    long
                } else {
                    short
                })
            }
        }
    }

    fn describe(content: &Content, arch: &'static Architecture) -> Result<ModelDesc, ArchError> {
        let meta = Meta::new(content, arch.name);
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let hp = hyper_params(&meta, arch, content)?;
        let n_embd = hp.n_embd;
        let t = |role, name: String, shape: Vec<usize>| TensorDesc { role, name, shape };
        // A linear layer: its bias is whatever `<name>.bias` the file has.
        let linear = |role, bias_role, stem: String, rows: usize, cols: usize| Linear {
            bias: has(&format!("{stem}.bias"))
                .then(|| t(bias_role, format!("{stem}.bias"), vec![rows])),
            weight: t(role, format!("{stem}.weight"), vec![rows, cols]),
        };

        let token_embd = t(
            Role::TokenEmbedding,
            "token_embd.weight".into(),
            vec![hp.vocab, n_embd],
        );
        let output = Linear {
            weight: match hp.tied_output {
                true => TensorDesc {
                    role: Role::Output,
                    ..token_embd.clone()
                },
                false => t(Role::Output, "output.weight".into(), vec![hp.vocab, n_embd]),
            },
            bias: has("output.bias")
                .then(|| t(Role::OutputBias, "output.bias".into(), vec![hp.vocab])),
        };
        let half_rope = vec![hp.rope.dim / 2];
        let long_short = || {
            (has("rope_factors_long.weight") || has("rope_factors_short.weight")).then(|| {
                RopeFactors::LongShort {
                    long: t(
                        Role::RopeFactorsLong,
                        "rope_factors_long.weight".into(),
                        half_rope.clone(),
                    ),
                    short: t(
                        Role::RopeFactorsShort,
                        "rope_factors_short.weight".into(),
                        half_rope.clone(),
                    ),
                }
            })
        };
        let rope_factors = match arch.rope_factors {
            RopeFactorsRule::None => None,
            RopeFactorsRule::LongShort => long_short(),
            RopeFactorsRule::Freqs if meta.string("rope.scaling.type")? == Some("longrope") => {
                long_short()
            }
            RopeFactorsRule::Freqs => has("rope_freqs.weight").then(|| {
                RopeFactors::Fixed(t(
                    Role::RopeFreqs,
                    "rope_freqs.weight".into(),
                    half_rope.clone(),
                ))
            }),
        };

        let experts = match arch.allows_experts {
            true => meta.usize_or("expert_count", 0)?,
            false => 0,
        };
        let sliding = sliding_layers(&meta, arch, hp.n_layer, hp.sliding_window)?;
        let (q_dim, kv_dim, n_ff) = (hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let mut blocks = Vec::with_capacity(hp.n_layer);
        for (i, &slides) in sliding.iter().enumerate() {
            let p = |name: &str| format!("blk.{i}.{name}");
            let qkv = if has(&p("attn_qkv.weight")) {
                QkvWeights::Fused(linear(
                    Role::AttnQkv,
                    Role::AttnQkvBias,
                    p("attn_qkv"),
                    q_dim + 2 * kv_dim,
                    n_embd,
                ))
            } else {
                QkvWeights::Separate {
                    q: linear(Role::AttnQ, Role::AttnQBias, p("attn_q"), q_dim, n_embd),
                    k: linear(Role::AttnK, Role::AttnKBias, p("attn_k"), kv_dim, n_embd),
                    v: linear(Role::AttnV, Role::AttnVBias, p("attn_v"), kv_dim, n_embd),
                }
            };
            let ffn = if experts > 0 {
                FeedForward::Experts {
                    router: t(
                        Role::FfnGateInput,
                        p("ffn_gate_inp.weight"),
                        vec![experts, n_embd],
                    ),
                    count: experts,
                    used: meta.usize_or("expert_used_count", 0)?,
                }
            } else if arch.fused_gate_up {
                FeedForward::FusedGateUp {
                    gate_up: linear(
                        Role::FfnGateUp,
                        Role::FfnUpBias,
                        p("ffn_up"),
                        2 * n_ff,
                        n_embd,
                    ),
                    down: linear(
                        Role::FfnDown,
                        Role::FfnDownBias,
                        p("ffn_down"),
                        n_embd,
                        n_ff,
                    ),
                }
            } else {
                FeedForward::Gated {
                    gate: linear(
                        Role::FfnGate,
                        Role::FfnGateBias,
                        p("ffn_gate"),
                        n_ff,
                        n_embd,
                    ),
                    up: linear(Role::FfnUp, Role::FfnUpBias, p("ffn_up"), n_ff, n_embd),
                    down: linear(
                        Role::FfnDown,
                        Role::FfnDownBias,
                        p("ffn_down"),
                        n_embd,
                        n_ff,
                    ),
                }
            };
            let norm = |role, name: &str| t(role, p(name), vec![n_embd]);
            let head_norm =
                |role, name: &str| arch.qk_norm.then(|| t(role, p(name), vec![hp.head_dim]));
            let post_norm = |role, name: &str| arch.post_norms.then(|| norm(role, name));
            blocks.push(Block {
                index: i,
                sliding_window: if slides { hp.sliding_window } else { None },
                rope_base: if slides {
                    hp.swa_rope_base
                } else {
                    hp.rope.base
                },
                rope_freq_scale: if slides { 1.0 } else { hp.rope.freq_scale },
                attn_norm: norm(Role::AttnNorm, "attn_norm.weight"),
                qkv,
                q_norm: head_norm(Role::AttnQNorm, "attn_q_norm.weight"),
                k_norm: head_norm(Role::AttnKNorm, "attn_k_norm.weight"),
                attn_output: linear(
                    Role::AttnOutput,
                    Role::AttnOutputBias,
                    p("attn_output"),
                    n_embd,
                    q_dim,
                ),
                post_attention_norm: post_norm(
                    Role::PostAttentionNorm,
                    "post_attention_norm.weight",
                ),
                ffn_norm: norm(Role::FfnNorm, "ffn_norm.weight"),
                ffn,
                post_ffw_norm: post_norm(Role::PostFfwNorm, "post_ffw_norm.weight"),
            });
        }
        Ok(ModelDesc {
            arch,
            token_embd,
            output_norm: t(Role::OutputNorm, "output_norm.weight".into(), vec![n_embd]),
            output,
            rope_factors,
            blocks,
            hparams: hp,
        })
    }

    fn check_tensors(&self, content: &Content) -> Result<(), ArchError> {
        for tensor in self.tensors() {
            let info = content
                .tensor_infos
                .get(&tensor.name)
                .ok_or_else(|| ArchError::MissingTensor(tensor.name.clone()))?;
            let found = info.shape.dims();
            if found != tensor.shape.as_slice() {
                return Err(ArchError::WrongShape {
                    name: tensor.name.clone(),
                    found: found.to_vec(),
                    expected: tensor.shape.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Block {
    /// Every tensor of the block, in the order the forward pass reads them.
    pub fn tensors(&self) -> Vec<&TensorDesc> {
        let mut all = Vec::new();
        self.push_tensors(&mut all);
        all
    }

    fn push_tensors<'a>(&'a self, all: &mut Vec<&'a TensorDesc>) {
        let linear = |all: &mut Vec<&'a TensorDesc>, l: &'a Linear| {
            all.push(&l.weight);
            all.extend(&l.bias);
        };
        all.push(&self.attn_norm);
        match &self.qkv {
            QkvWeights::Separate { q, k, v } => {
                for l in [q, k, v] {
                    linear(all, l);
                }
            }
            QkvWeights::Fused(qkv) => linear(all, qkv),
        }
        all.extend(&self.q_norm);
        all.extend(&self.k_norm);
        linear(all, &self.attn_output);
        all.extend(&self.post_attention_norm);
        all.push(&self.ffn_norm);
        match &self.ffn {
            FeedForward::Gated { gate, up, down } => {
                for l in [gate, up, down] {
                    linear(all, l);
                }
            }
            FeedForward::FusedGateUp { gate_up, down } => {
                linear(all, gate_up);
                linear(all, down);
            }
            FeedForward::Experts { router, .. } => all.push(router),
        }
        all.extend(&self.post_ffw_norm);
    }
}

/// Reads and checks the hyper-parameters of `arch`.
fn hyper_params(
    meta: &Meta,
    arch: &Architecture,
    content: &Content,
) -> Result<HyperParams, ArchError> {
    let n_embd = meta.positive("embedding_length")?;
    let n_head = meta.positive("attention.head_count")?;
    let n_kv_head = match meta.has("attention.head_count_kv") {
        true => meta.positive("attention.head_count_kv")?,
        false => n_head,
    };
    if n_head % n_kv_head != 0 {
        return Err(ArchError::Inconsistent(format!(
            "`{}` ({n_head}) is not a multiple of `{}` ({n_kv_head}): each KV head must serve the same \
             number of query heads",
            meta.key("attention.head_count"),
            meta.key("attention.head_count_kv")
        )));
    }
    let even_split = |what: &str| -> Result<usize, ArchError> {
        match meta.has(what) {
            true => meta.positive(what),
            false if n_embd % n_head == 0 => Ok(n_embd / n_head),
            false => Err(ArchError::Inconsistent(format!(
                "`{}` ({n_embd}) is not a multiple of `{}` ({n_head}) and `{}` is not set",
                meta.key("embedding_length"),
                meta.key("attention.head_count"),
                meta.key(what)
            ))),
        }
    };
    let head_dim = even_split("attention.key_length")?;
    let value_dim = even_split("attention.value_length")?;
    if value_dim != head_dim {
        return Err(ArchError::Unsupported(format!(
            "`{}` ({value_dim}) differs from `{}` ({head_dim}); heads of two sizes are not supported",
            meta.key("attention.value_length"),
            meta.key("attention.key_length")
        )));
    }
    let n_layer = meta.positive("block_count")?;
    let n_ff = meta.positive("feed_forward_length")?;
    let context_length = meta.positive("context_length")?;

    let rope_dim = meta.usize_or("rope.dimension_count", head_dim)?;
    if rope_dim > head_dim || rope_dim % 2 != 0 || rope_dim == 0 {
        return Err(ArchError::Inconsistent(format!(
            "`{}` ({rope_dim}) must be even, positive and at most the head size ({head_dim})",
            meta.key("rope.dimension_count")
        )));
    }
    let scaling = meta.string("rope.scaling.type")?.unwrap_or("linear");
    let factor = match meta.f32_opt("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => meta.f32_opt("rope.scale_linear")?,
    };
    match scaling {
        "none" | "linear" => {}
        "longrope" if arch.rope_factors != RopeFactorsRule::None => {}
        other => {
            return Err(ArchError::Unsupported(format!(
                "rope scaling `{other}` (`{}`) is not supported; supported: none, linear{}",
                meta.key("rope.scaling.type"),
                if arch.rope_factors == RopeFactorsRule::None {
                    ""
                } else {
                    ", longrope"
                }
            )))
        }
    }
    let freq_scale = match factor {
        Some(f) if f != 0.0 && scaling != "none" => 1.0 / f,
        _ => 1.0,
    };
    let rope = Rope {
        dim: rope_dim,
        base: meta.f32_or("rope.freq_base", 10000.0)?,
        freq_scale,
        attn_factor: meta.f32_or("rope.scaling.attn_factor", 1.0)?,
        style: arch.rope_style,
        original_context: meta.usize_or("rope.scaling.original_context_length", context_length)?,
    };

    let sliding_window = match arch.sliding_window {
        SlidingWindowRule::None => None,
        SlidingWindowRule::Pattern { .. } => {
            Some(meta.usize_or("attention.sliding_window", 0)?).filter(|&w| w > 0)
        }
    };
    let embedding = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| ArchError::MissingTensor("token_embd.weight".into()))?;
    let vocab = match embedding.shape.dims() {
        &[vocab, width] if width == n_embd && vocab > 0 => vocab,
        found => {
            return Err(ArchError::Inconsistent(format!(
                "tensor `token_embd.weight` has shape {found:?}, expected [vocabulary size, {n_embd}] (`{}`)",
                meta.key("embedding_length")
            )))
        }
    };
    let mut hp = HyperParams {
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        value_dim,
        n_layer,
        n_ff,
        vocab,
        context_length,
        rope,
        rms_eps: meta.f32_required("attention.layer_norm_rms_epsilon")?,
        sliding_window,
        swa_rope_base: meta.f32_or("rope.freq_base_swa", 10000.0)?,
        embedding_scale: arch.scale_embedding.then(|| (n_embd as f32).sqrt()),
        query_scale: 0.0,
        final_logit_softcap: match arch.logit_softcap {
            true => meta
                .f32_opt("final_logit_softcapping")?
                .filter(|&c| c != 0.0),
            false => None,
        },
        activation: arch.activation,
        tied_output: !content.tensor_infos.contains_key("output.weight"),
    };
    hp.query_scale = (arch.query_scale)(&hp);
    Ok(hp)
}

/// Which layers use the sliding window (all `false` without one).
fn sliding_layers(
    meta: &Meta,
    arch: &Architecture,
    n_layer: usize,
    window: Option<usize>,
) -> Result<Vec<bool>, ArchError> {
    let SlidingWindowRule::Pattern { default_period } = arch.sliding_window else {
        return Ok(vec![false; n_layer]);
    };
    if window.is_none() {
        return Ok(vec![false; n_layer]);
    }
    let key = "attention.sliding_window_pattern";
    if let Some(per_layer) = meta.bools(key)? {
        if per_layer.len() < n_layer {
            return Err(ArchError::Inconsistent(format!(
                "`{}` has {} entries for {n_layer} layers",
                meta.key(key),
                per_layer.len()
            )));
        }
        return Ok(per_layer[..n_layer].to_vec());
    }
    let period = meta.usize_or(key, default_period)?;
    // llama.cpp's set_swa_pattern: a period of 0 makes every layer slide.
    Ok((0..n_layer)
        .map(|il| period == 0 || il % period < period - 1)
        .collect())
}

/// The query scale of most architectures: 1 / sqrt(head size).
pub(crate) fn inverse_sqrt_head_dim(hp: &HyperParams) -> f32 {
    1.0 / (hp.head_dim as f32).sqrt()
}

#[cfg(test)]
mod tests;
