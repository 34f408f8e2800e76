//! `llama`: Llama 2/3.x, Mistral, SmolLM2, TinyLlama. SwiGLU, adjacent-pair RoPE (the
//! converter permutes Q and K for it), Llama 3.1+'s `rope_freqs.weight`, tied or untied
//! output, and Mixtral-style mixtures of experts (llama.cpp `src/models/llama.cpp`).

use super::{
    inverse_sqrt_head_dim, Activation, Architecture, RopeFactorsRule, RopeStyle, SlidingWindowRule,
};

pub(super) const LLAMA: Architecture = Architecture {
    name: "llama",
    rope_style: RopeStyle::Normal,
    activation: Activation::Silu,
    qk_norm: false,
    post_norms: false,
    fused_gate_up: false,
    scale_embedding: false,
    sliding_window: SlidingWindowRule::None,
    query_scale: inverse_sqrt_head_dim,
    rope_factors: RopeFactorsRule::Freqs,
    logit_softcap: false,
    allows_experts: true,
};
