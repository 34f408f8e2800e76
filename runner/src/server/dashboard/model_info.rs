//! Which devices suit a model: an estimate of the memory it needs (from the facts in
//! its header, see [`ModelFacts`]) against each place's memory.

use serde::Serialize;

pub use crate::model::ModelFacts;

use super::machine::MemoryPlace;

/// Bytes per KV-cache value in the estimate: our engines keep keys and values in f32.
const KV_BYTES_PER_VALUE: u64 = 4;
/// Room for activations, scratch buffers and the runtime, on top of weights and cache.
const OVERHEAD_PERCENT: u64 = 10;

/// Whether the model fits one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suitability {
    pub device: Option<&'static str>,
    pub name: String,
    pub memory_bytes: Option<u64>,
    pub memory_source: &'static str,
    /// `null` when the memory is unknown.
    pub fits: Option<bool>,
}

impl ModelFacts {
    /// Estimated memory to serve `context` tokens: weights, the KV cache for the whole
    /// context, and 10 % on top.
    pub fn memory_needed(&self, context: usize) -> u64 {
        let kv = match (self.layers, self.kv_width) {
            (Some(layers), Some(width)) => 2 * layers * width * context as u64 * KV_BYTES_PER_VALUE,
            _ => 0,
        };
        (self.weights_bytes + kv) * (100 + OVERHEAD_PERCENT) / 100
    }
}

/// For each place, whether `needed` bytes fit its memory.
pub fn suitability(needed: u64, places: Vec<MemoryPlace>) -> Vec<Suitability> {
    places
        .into_iter()
        .map(|p| Suitability {
            fits: p.memory_bytes.map(|m| needed <= m),
            device: p.device,
            name: p.name,
            memory_bytes: p.memory_bytes,
            memory_source: p.memory_source,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimate_counts_the_cache_and_the_overhead() {
        let facts = ModelFacts {
            weights_bytes: 1000,
            layers: Some(2),
            kv_width: Some(8),
            ..Default::default()
        };
        // 1000 + 2 (K, V) * 2 layers * 8 * 10 tokens * 4 bytes = 2280, plus 10 %.
        assert_eq!(facts.memory_needed(10), 2508);
        let places = vec![
            MemoryPlace {
                device: Some("cpu"),
                name: "CPU".into(),
                memory_bytes: Some(4096),
                memory_source: "facts: memory",
            },
            MemoryPlace {
                device: Some("vulkan"),
                name: "small".into(),
                memory_bytes: Some(2000),
                memory_source: "Level Zero",
            },
            MemoryPlace {
                device: None,
                name: "unknown".into(),
                memory_bytes: None,
                memory_source: "unknown",
            },
        ];
        let fits: Vec<_> = suitability(2508, places).iter().map(|s| s.fits).collect();
        assert_eq!(fits, [Some(true), Some(false), None]);
    }
}
