//! `qwen3`: Qwen3 (dense). The llama block with a per-head RMSNorm of queries and keys
//! before RoPE, NeoX RoPE and no biases; its head size (`attention.key_length`) need not
//! be n_embd / n_head (llama.cpp `src/models/qwen3.cpp`).

use super::{
    inverse_sqrt_head_dim, Activation, Architecture, RopeFactorsRule, RopeStyle, SlidingWindowRule,
};

pub(super) const QWEN3: Architecture = Architecture {
    name: "qwen3",
    rope_style: RopeStyle::Neox,
    activation: Activation::Silu,
    qk_norm: true,
    post_norms: false,
    fused_gate_up: false,
    scale_embedding: false,
    sliding_window: SlidingWindowRule::None,
    query_scale: inverse_sqrt_head_dim,
    rope_factors: RopeFactorsRule::None,
    logit_softcap: false,
    allows_experts: false,
};
