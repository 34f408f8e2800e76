//! Token sampling: turns the logits of one step into the next token.
//!
//! The order of operations follows vLLM and Hugging Face transformers:
//!
//! 1. penalties on the raw logits (repetition as in llama.cpp/CTRL, then presence and
//!    frequency as OpenAI defines them);
//! 2. greedy (arg-max) when `temperature == 0`;
//! 3. otherwise logits are divided by the temperature, and the softmax over them is cut
//!    by top-k, top-p (nucleus) and min-p, renormalised, and sampled.
//!
//! top-p and min-p are both computed on the distribution left after top-k. Because
//! min-p compares each probability with the largest one, its result does not depend on
//! whether top-p ran first, so the two are applied as one cut of the sorted candidates.
//!
//! Sampling with the same `seed`, logits and history always gives the same tokens
//! (the generator is rand's `StdRng`, pinned by Cargo.lock). Without a seed, the
//! generator is seeded from the operating system.
//!
//! Cost per step is O(vocab) plus a sort of the few candidates that survive: top-k uses
//! a selection (`select_nth_unstable`), and top-p first tries the largest
//! [`NUCLEUS_PROBE`] candidates before it falls back to sorting the whole vocabulary.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How many of the most probable tokens top-p looks at before it sorts the whole
/// vocabulary. Real language-model distributions almost always reach p = 0.95 within
/// the top few hundred tokens.
const NUCLEUS_PROBE: usize = 256;

/// The sampling settings of one request. [`Default`] is OpenAI's neutral setting:
/// temperature 1 and every filter and penalty off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature, `0..=2`. `0` picks the most probable token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most probable tokens; `0` turns the filter off.
    pub top_k: usize,
    /// Keep the smallest set of most probable tokens whose probabilities add up to at
    /// least `top_p`, `0..=1`. `1` turns the filter off; `0` keeps only the best token.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the probability of the most
    /// likely token, `0..=1`. `0` turns the filter off.
    pub min_p: f32,
    /// Divides positive logits and multiplies negative logits of every token already in
    /// the history by this factor (llama.cpp's `repeat_penalty`), `> 0`. `1` is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already in the history (OpenAI),
    /// `-2..=2`. `0` is off.
    pub presence_penalty: f32,
    /// Subtracted from the logit of every token once per occurrence in the history
    /// (OpenAI), `-2..=2`. `0` is off.
    pub frequency_penalty: f32,
    /// Seed of the random generator; the same seed reproduces the same tokens.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// A sampling parameter outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid sampling parameter `{name}` = {value}: {allowed}")]
pub struct SamplingError {
    /// The parameter's name as it appears in [`SamplingParams`] and in the OpenAI API.
    pub name: &'static str,
    /// The rejected value, as text.
    pub value: String,
    /// What would have been accepted.
    pub allowed: &'static str,
}

impl SamplingParams {
    /// Greedy decoding: always the most probable token, no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every parameter against its allowed range and names the first one that is
    /// outside it.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn check(
            name: &'static str,
            value: f32,
            ok: bool,
            allowed: &'static str,
        ) -> Result<(), SamplingError> {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(SamplingError {
                    name,
                    value: value.to_string(),
                    allowed,
                })
            }
        }
        let t = self.temperature;
        check(
            "temperature",
            t,
            (0.0..=2.0).contains(&t),
            "allowed range is 0 to 2 (0 = greedy)",
        )?;
        let p = self.top_p;
        check(
            "top_p",
            p,
            (0.0..=1.0).contains(&p),
            "allowed range is 0 to 1 (1 = off)",
        )?;
        let m = self.min_p;
        check(
            "min_p",
            m,
            (0.0..=1.0).contains(&m),
            "allowed range is 0 to 1 (0 = off)",
        )?;
        let r = self.repetition_penalty;
        check(
            "repetition_penalty",
            r,
            r > 0.0,
            "must be greater than 0 (1 = off)",
        )?;
        let pp = self.presence_penalty;
        check(
            "presence_penalty",
            pp,
            (-2.0..=2.0).contains(&pp),
            "allowed range is -2 to 2 (0 = off)",
        )?;
        let fp = self.frequency_penalty;
        check(
            "frequency_penalty",
            fp,
            (-2.0..=2.0).contains(&fp),
            "allowed range is -2 to 2 (0 = off)",
        )?;
        Ok(())
    }

    /// Whether the pick is the greedy token of the logits as they come: temperature 0 and
    /// no penalty to apply first (the filters do not matter at temperature 0).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && !self.has_penalties()
    }

    fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// Samples tokens for one sequence. Keep one `Sampler` per request: it owns the random
/// generator (so a seeded request is reproducible) and scratch buffers reused between
/// steps.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Candidate token ids of the current step.
    candidates: Vec<u32>,
    /// Occurrences of each token in the history; all zero between steps.
    counts: Vec<u32>,
    /// Distinct tokens of the history of the current step (indices into `counts`).
    seen: Vec<u32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Validates `params` and creates the sampler.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler {
            params,
            rng,
            candidates: Vec::new(),
            counts: Vec::new(),
            seen: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry; modified in place
    /// by penalties and temperature). `previous_tokens` is the history the penalties
    /// look at: the caller decides its window (OpenAI counts the generated tokens,
    /// llama.cpp the last 64 tokens including the prompt). Ids outside the vocabulary
    /// are ignored. NaN logits count as impossible. Returns 0 for empty `logits`.
    pub fn sample(&mut self, logits: &mut [f32], previous_tokens: &[u32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        if self.params.has_penalties() {
            self.apply_penalties(logits, previous_tokens);
        }
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        self.sample_distribution(logits)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], previous_tokens: &[u32]) {
        let vocab = logits.len();
        if self.counts.len() < vocab {
            self.counts.resize(vocab, 0);
        }
        self.seen.clear();
        for &t in previous_tokens {
            let Some(count) = self
                .counts
                .get_mut(t as usize)
                .filter(|_| (t as usize) < vocab)
            else {
                continue;
            };
            if *count == 0 {
                self.seen.push(t);
            }
            *count += 1;
        }
        let SamplingParams {
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            ..
        } = self.params;
        for &t in &self.seen {
            let count = std::mem::take(&mut self.counts[t as usize]);
            let logit = &mut logits[t as usize];
            if repetition_penalty != 1.0 {
                if *logit > 0.0 {
                    *logit /= repetition_penalty;
                } else {
                    *logit *= repetition_penalty;
                }
            }
            *logit -= count as f32 * frequency_penalty + presence_penalty;
        }
    }

    fn sample_distribution(&mut self, logits: &mut [f32]) -> u32 {
        let SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..
        } = self.params;
        let inv_t = 1.0 / temperature;
        for l in logits.iter_mut() {
            *l = if l.is_nan() {
                f32::NEG_INFINITY
            } else {
                *l * inv_t
            };
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            // Every token is impossible; there is nothing to sample from.
            return 0;
        }
        // Unnormalised probabilities, in place.
        let mut total = 0f64;
        for l in logits.iter_mut() {
            *l = (*l - max).exp();
            total += *l as f64;
        }
        let probs: &[f32] = logits;

        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(0..probs.len() as u32);
        let by_prob_desc = |a: &u32, b: &u32| probs[*b as usize].total_cmp(&probs[*a as usize]);

        // top-k: an O(n) selection, so only the survivors need sorting.
        if top_k > 0 && top_k < candidates.len() {
            candidates.select_nth_unstable_by(top_k - 1, by_prob_desc);
            candidates.truncate(top_k);
            total = candidates.iter().map(|&t| probs[t as usize] as f64).sum();
        }
        if top_p < 1.0 || min_p > 0.0 {
            sort_for_cut(candidates, probs, total, top_p, min_p, &by_prob_desc);
        }

        // top-p and min-p keep a prefix of the sorted candidates.
        let mut keep = candidates.len();
        if top_p < 1.0 {
            let target = top_p as f64 * total;
            let mut cumulative = 0f64;
            for (i, &t) in candidates.iter().enumerate() {
                cumulative += probs[t as usize] as f64;
                if cumulative >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        if min_p > 0.0 {
            // probs are relative to the maximum, which is 1.0.
            let threshold = min_p * probs[candidates[0] as usize];
            let above = candidates[..keep].partition_point(|&t| probs[t as usize] >= threshold);
            keep = above.max(1);
        }
        candidates.truncate(keep.max(1));
        let kept_total: f64 = candidates.iter().map(|&t| probs[t as usize] as f64).sum();

        let mut remaining = self.rng.random::<f64>() * kept_total;
        for &t in candidates.iter() {
            remaining -= probs[t as usize] as f64;
            if remaining < 0.0 {
                return t;
            }
        }
        // Rounding left a sliver at the end: the last candidate with a non-zero weight.
        candidates
            .iter()
            .rev()
            .copied()
            .find(|&t| probs[t as usize] > 0.0)
            .unwrap_or(candidates[0])
    }
}

/// Sorts `candidates` by descending probability far enough for the top-p and min-p
/// cuts: first only the [`NUCLEUS_PROBE`] most probable ones, and if the cuts fall
/// inside them the rest is dropped; otherwise the whole list is sorted.
fn sort_for_cut(
    candidates: &mut Vec<u32>,
    probs: &[f32],
    total: f64,
    top_p: f32,
    min_p: f32,
    by_prob_desc: &impl Fn(&u32, &u32) -> std::cmp::Ordering,
) {
    if candidates.len() > NUCLEUS_PROBE {
        candidates.select_nth_unstable_by(NUCLEUS_PROBE - 1, by_prob_desc);
        let head = &mut candidates[..NUCLEUS_PROBE];
        head.sort_unstable_by(by_prob_desc);
        let mass: f64 = head.iter().map(|&t| probs[t as usize] as f64).sum();
        let top_p_inside = top_p < 1.0 && mass >= top_p as f64 * total;
        let max = probs[head[0] as usize];
        let min_p_inside = min_p > 0.0 && probs[head[NUCLEUS_PROBE - 1] as usize] < min_p * max;
        if top_p_inside || min_p_inside {
            candidates.truncate(NUCLEUS_PROBE);
            return;
        }
    }
    candidates.sort_unstable_by(by_prob_desc);
}

/// The greedy pick: the id of the largest logit, the lowest of equals; NaN never wins and
/// 0 comes back when nothing is above -inf. (The Vulkan engine's `argmax.wgsl` follows the
/// same rule on the GPU.)
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).expect("valid parameters")
    }

    fn seeded(params: SamplingParams) -> Sampler {
        sampler(SamplingParams {
            seed: Some(7),
            ..params
        })
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, -5.0, -4.0], &[]), 2);
        assert_eq!(s.sample(&mut [], &[]), 0);
    }

    #[test]
    fn defaults_are_neutral_and_valid() {
        let p = SamplingParams::default();
        assert!(p.validate().is_ok());
        assert!(!p.has_penalties());
        assert_eq!(p.temperature, 1.0);
    }

    #[test]
    fn invalid_parameters_are_named_with_their_range() {
        let cases = [
            (
                SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: 2.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::INFINITY,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.1,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
        ];
        for (params, name) in cases {
            let err = Sampler::new(params).expect_err(name);
            assert_eq!(err.name, name);
            let text = err.to_string();
            assert!(
                text.contains(name) && text.contains("allowed range")
                    || text.contains("greater than"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
        let run = |seed| {
            let mut s = sampler(SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1 .. 0.4.
        let logits = [1f32.ln(), 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let mut s = seeded(SamplingParams::default());
        let mut hits = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            hits[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        for (i, &h) in hits.iter().enumerate() {
            let expected = (i + 1) as f64 / 10.0;
            let got = h as f64 / n as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn low_temperature_sharpens_the_distribution() {
        let logits = [0.0f32, 1.0];
        let mut s = seeded(SamplingParams {
            temperature: 0.1,
            ..Default::default()
        });
        // p(1) = 1 / (1 + e^-10) ≈ 0.99995
        let ones = (0..2000)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        assert!(ones >= 1995, "{ones}");
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        // A permutation of 0..5000: no ties.
        let logits: Vec<f32> = (0..5000u32)
            .map(|i| (i * 7919 % 5000) as f32 / 1000.0)
            .collect();
        let mut best: Vec<u32> = (0..5000).collect();
        best.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let allowed: std::collections::HashSet<u32> = best[..3].iter().copied().collect();
        let mut s = seeded(SamplingParams {
            top_k: 3,
            ..Default::default()
        });
        for _ in 0..500 {
            assert!(allowed.contains(&s.sample(&mut logits.clone(), &[])));
        }
        let mut one = seeded(SamplingParams {
            top_k: 1,
            ..Default::default()
        });
        assert_eq!(one.sample(&mut logits.clone(), &[]), argmax(&logits));
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probabilities 0.5, 0.3, 0.15, 0.05
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let mut s = seeded(SamplingParams {
            top_p: 0.75,
            ..Default::default()
        });
        let mut hits = [0usize; 4];
        for _ in 0..4000 {
            hits[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert_eq!(hits[2] + hits[3], 0, "{hits:?}");
        assert!(hits[0] > 0 && hits[1] > 0, "{hits:?}");
        // Renormalised: 0.5/0.8 = 0.625.
        let share = hits[0] as f64 / 4000.0;
        assert!((share - 0.625).abs() < 0.03, "{share}");

        let mut zero = seeded(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        });
        assert_eq!(zero.sample(&mut logits.clone(), &[]), 0);
    }

    #[test]
    fn top_p_over_a_flat_vocabulary_falls_back_to_a_full_sort() {
        // 10,000 equally likely tokens: the first 256 hold 2.56 % of the mass, so
        // top_p = 0.5 must look past the probe and keep about half of the vocabulary.
        let logits = vec![0.0f32; 10_000];
        let mut s = seeded(SamplingParams {
            top_p: 0.5,
            ..Default::default()
        });
        let distinct: std::collections::HashSet<u32> = (0..3000)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect();
        assert!(distinct.len() > 1500, "{}", distinct.len());
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // probabilities relative to the best: 1, 0.5, 0.09
        let logits = [0.0f32, 0.5f32.ln(), 0.09f32.ln()];
        let mut s = seeded(SamplingParams {
            min_p: 0.1,
            ..Default::default()
        });
        let hits: Vec<u32> = (0..3000)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect();
        assert!(!hits.contains(&2));
        assert!(hits.contains(&0) && hits.contains(&1));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = sampler(SamplingParams {
            repetition_penalty: 2.0,
            temperature: 0.0,
            ..Default::default()
        });
        let mut logits = [4.0f32, -1.0, 3.0, 1.0];
        // Token 0 appears twice: still penalised once. 99 is out of range: ignored.
        let picked = s.sample(&mut logits, &[0, 1, 0, 99]);
        assert_eq!(logits, [2.0, -2.0, 3.0, 1.0]);
        assert_eq!(picked, 2);
    }

    #[test]
    fn presence_and_frequency_penalties_subtract() {
        let mut s = sampler(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            temperature: 0.0,
            ..Default::default()
        });
        let mut logits = [1.0f32, 1.0, 1.0];
        s.sample(&mut logits, &[0, 0, 0, 2]);
        assert_eq!(logits, [1.0 - 0.5 - 0.75, 1.0, 1.0 - 0.5 - 0.25]);
        // The counts are cleared between steps.
        let mut again = [1.0f32, 1.0, 1.0];
        s.sample(&mut again, &[1]);
        assert_eq!(again, [1.0, 1.0 - 0.75, 1.0]);
    }

    #[test]
    fn all_impossible_tokens_do_not_panic() {
        let mut s = seeded(SamplingParams {
            top_p: 0.9,
            min_p: 0.1,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY, f32::NAN], &[]), 0);
    }

    #[test]
    fn serde_defaults_fill_missing_fields() {
        let p: SamplingParams = serde_json::from_str(r#"{"temperature":0.7,"seed":3}"#).unwrap();
        assert_eq!(
            p,
            SamplingParams {
                temperature: 0.7,
                seed: Some(3),
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<SamplingParams>(r#"{"temprature":0.7}"#).is_err());
    }
}
