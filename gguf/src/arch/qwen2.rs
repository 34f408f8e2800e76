//! `qwen2`: Qwen2 and Qwen2.5. The llama block with biases on Q, K and V and
//! half-split (NeoX) RoPE (llama.cpp `src/models/qwen2.cpp`).

use super::{
    inverse_sqrt_head_dim, Activation, Architecture, RopeFactorsRule, RopeStyle, SlidingWindowRule,
};

pub(super) const QWEN2: Architecture = Architecture {
    name: "qwen2",
    rope_style: RopeStyle::Neox,
    activation: Activation::Silu,
    qk_norm: false,
    post_norms: false,
    fused_gate_up: false,
    scale_embedding: false,
    sliding_window: SlidingWindowRule::None,
    query_scale: inverse_sqrt_head_dim,
    rope_factors: RopeFactorsRule::None,
    logit_softcap: false,
    allows_experts: false,
};
