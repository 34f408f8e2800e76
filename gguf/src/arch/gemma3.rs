//! `gemma3`: Gemma 3 (text). GeGLU (tanh GELU), four RMSNorms per block (before and
//! after attention and feed-forward), per-head q/k RMSNorm, embeddings scaled by
//! sqrt(n_embd), NeoX RoPE, and sliding-window layers interleaved with global ones:
//! with a window, five of every six layers slide (`attention.sliding_window_pattern`
//! overrides the period) and use `rope.freq_base_swa` (10000) without rope scaling.
//!
//! The norm weights are used as stored: Gemma's `1 + w` is added by the converter.
//! Queries are scaled by 1/sqrt(head size), except for the 62-layer 27B model, which
//! uses 1/sqrt(n_embd / n_head) (llama.cpp `src/models/gemma3.cpp`).

use super::{Activation, Architecture, HyperParams, RopeFactorsRule, RopeStyle, SlidingWindowRule};

pub(super) const GEMMA3: Architecture = Architecture {
    name: "gemma3",
    rope_style: RopeStyle::Neox,
    activation: Activation::GeluTanh,
    qk_norm: true,
    post_norms: true,
    fused_gate_up: false,
    scale_embedding: true,
    sliding_window: SlidingWindowRule::Pattern { default_period: 6 },
    query_scale,
    rope_factors: RopeFactorsRule::None,
    logit_softcap: true,
    allows_experts: false,
};

fn query_scale(hp: &HyperParams) -> f32 {
    let size = match hp.n_layer {
        62 => hp.n_embd / hp.n_head,
        _ => hp.head_dim,
    };
    1.0 / (size as f32).sqrt()
}
