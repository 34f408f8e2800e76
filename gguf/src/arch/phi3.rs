//! `phi3`: Phi-3, Phi-3.5 and Phi-4-mini. Fused Q|K|V (`attn_qkv`) and fused gate|up
//! (`ffn_up`, gate's rows first), NeoX RoPE, LongRoPE factors for the long-context
//! variants. llama.cpp ignores Phi-3's sliding window (its converters do not describe it
//! correctly), and so do we (llama.cpp `src/models/phi3.cpp`).

use super::{
    inverse_sqrt_head_dim, Activation, Architecture, RopeFactorsRule, RopeStyle, SlidingWindowRule,
};

pub(super) const PHI3: Architecture = Architecture {
    name: "phi3",
    rope_style: RopeStyle::Neox,
    activation: Activation::Silu,
    qk_norm: false,
    post_norms: false,
    fused_gate_up: true,
    scale_embedding: false,
    sliding_window: SlidingWindowRule::None,
    query_scale: inverse_sqrt_head_dim,
    rope_factors: RopeFactorsRule::LongShort,
    logit_softcap: false,
    allows_experts: false,
};
