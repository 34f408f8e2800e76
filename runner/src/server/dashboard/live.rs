//! Live figures for the dashboard that `/metrics` cannot give back as numbers: tokens
//! per second over the last minutes, the last and mean time to first token, the last
//! generation's speed, the running sequences' lengths, and generation requests by status.
//!
//! The token history is kept here, on the server, in one-second buckets: a page opened
//! after a burst still sees it, every client (and any other tool reading
//! `/v1/dashboard`) sees the same chart, and it costs a few kilobytes. Buckets are
//! filled by the worker as tokens come, so nothing runs while the server is idle.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds of history kept.
pub const HISTORY_SECONDS: u64 = 300;
/// Seconds per point of the history chart.
pub const POINT_SECONDS: u64 = 2;
/// Whole seconds before the current one in the window of the "now" figure (about 5 s).
const NOW_WINDOW_WHOLE_SECONDS: u64 = 4;

/// Routes whose requests the dashboard counts: the generation API, not the page's
/// own polling nor health checks and scrapes.
const COUNTED_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions"];

/// Live figures, updated by the request gate and the generation worker.
pub struct LiveStats {
    started: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (second since start, tokens generated in it), oldest first.
    buckets: VecDeque<(u64, u64)>,
    requests_by_status: BTreeMap<u16, u64>,
    ttft_last: Option<f64>,
    ttft_sum: f64,
    ttft_count: u64,
    /// The sequences on the engine now, by id.
    running: BTreeMap<u64, Running>,
    next_id: u64,
    last_generation: Option<LastGeneration>,
}

/// A generation on the engine now.
struct Running {
    prompt_tokens: usize,
    generated: usize,
    first_token: Option<Instant>,
    ttft: Option<f64>,
}

/// Speed of the last finished generation, as chat UIs show under a reply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LastGeneration {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Decode speed: tokens after the first, over the time since the first.
    pub tokens_per_second: Option<f64>,
    pub time_to_first_token_s: Option<f64>,
}

/// One point of the tok/s chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t: u64,
    pub tokens_per_second: f64,
}

/// Time to first token, from request arrival (queue wait included).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TtftFigures {
    pub last_s: Option<f64>,
    pub mean_s: Option<f64>,
    pub count: u64,
}

/// The running sequences' share of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SequenceFigures {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// A consistent copy of the figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSnapshot {
    pub tokens_per_second: f64,
    pub history_interval_s: u64,
    pub history: Vec<Point>,
    pub requests_by_status: BTreeMap<String, u64>,
    pub requests_total: u64,
    pub time_to_first_token: TtftFigures,
    pub last_generation: Option<LastGeneration>,
    /// One entry per running sequence, oldest first.
    pub running_sequences: Vec<SequenceFigures>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl LiveStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain counters stay usable even if a holder panicked.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an answered request of a generation route.
    pub fn count_request(&self, route: &str, status: u16) {
        if COUNTED_ROUTES.contains(&route) {
            *self.lock().requests_by_status.entry(status).or_default() += 1;
        }
    }

    /// A generation starts on the engine; the id names it in later calls.
    pub fn generation_started(&self, prompt_tokens: usize) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.running.insert(
            id,
            Running {
                prompt_tokens,
                generated: 0,
                first_token: None,
                ttft: None,
            },
        );
        id
    }

    /// Generation `id` produced a token; `since_arrival` is set for the first one.
    pub fn token(&self, id: u64, now: Instant, since_arrival: Option<Duration>) {
        let second = now.saturating_duration_since(self.started).as_secs();
        let mut inner = self.lock();
        match inner.buckets.back_mut() {
            Some((s, count)) if *s == second => *count += 1,
            _ => inner.buckets.push_back((second, 1)),
        }
        while inner
            .buckets
            .front()
            .is_some_and(|(s, _)| s + HISTORY_SECONDS + POINT_SECONDS < second)
        {
            inner.buckets.pop_front();
        }
        if let Some(ttft) = since_arrival {
            let ttft = ttft.as_secs_f64();
            inner.ttft_last = Some(ttft);
            inner.ttft_sum += ttft;
            inner.ttft_count += 1;
        }
        if let Some(running) = inner.running.get_mut(&id) {
            running.generated += 1;
            if running.first_token.is_none() {
                running.first_token = Some(now);
                running.ttft = since_arrival.map(|d| d.as_secs_f64());
            }
        }
    }

    /// Generation `id` ended (finished, cancelled or failed).
    pub fn generation_finished(&self, id: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(running) = inner.running.remove(&id) {
            let tokens_per_second = running.first_token.and_then(|first| {
                let seconds = now.saturating_duration_since(first).as_secs_f64();
                if running.generated > 1 && seconds > 0.0 {
                    Some((running.generated - 1) as f64 / seconds)
                } else {
                    None
                }
            });
            inner.last_generation = Some(LastGeneration {
                prompt_tokens: running.prompt_tokens,
                completion_tokens: running.generated,
                tokens_per_second,
                time_to_first_token_s: running.ttft,
            });
        }
    }

    /// The figures now.
    pub fn snapshot(&self) -> LiveSnapshot {
        self.snapshot_at(Instant::now(), SystemTime::now())
    }

    fn snapshot_at(&self, now: Instant, wall: SystemTime) -> LiveSnapshot {
        let elapsed = now.saturating_duration_since(self.started);
        let second = elapsed.as_secs();
        let inner = self.lock();
        let tokens_in = |from: u64, to: u64| -> u64 {
            inner
                .buckets
                .iter()
                .filter(|(s, _)| (from..to).contains(s))
                .map(|(_, c)| c)
                .sum()
        };

        // "Now": the last four whole seconds and the current partial one.
        let from = second.saturating_sub(NOW_WINDOW_WHOLE_SECONDS);
        let window = (elapsed.as_secs_f64() - from as f64).max(1.0);
        let tokens_per_second = tokens_in(from, second + 1) as f64 / window;

        // Chart points over whole, finished intervals ending at the last whole second.
        let wall_ms = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let end_ms = wall_ms.saturating_sub(elapsed.subsec_millis() as u64);
        let points = HISTORY_SECONDS / POINT_SECONDS;
        let history = (0..points)
            .map(|i| {
                let back = (points - i) * POINT_SECONDS;
                let from = second.checked_sub(back);
                let to = second.checked_sub(back - POINT_SECONDS);
                let tokens = match (from, to) {
                    (Some(from), Some(to)) => tokens_in(from, to),
                    (None, Some(to)) => tokens_in(0, to),
                    _ => 0,
                };
                Point {
                    t: end_ms.saturating_sub((back - POINT_SECONDS) * 1000),
                    tokens_per_second: tokens as f64 / POINT_SECONDS as f64,
                }
            })
            .collect();

        LiveSnapshot {
            tokens_per_second,
            history_interval_s: POINT_SECONDS,
            history,
            requests_total: inner.requests_by_status.values().sum(),
            requests_by_status: inner
                .requests_by_status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            time_to_first_token: TtftFigures {
                last_s: inner.ttft_last,
                mean_s: if inner.ttft_count > 0 {
                    Some(inner.ttft_sum / inner.ttft_count as f64)
                } else {
                    None
                },
                count: inner.ttft_count,
            },
            last_generation: inner.last_generation,
            running_sequences: inner
                .running
                .values()
                .map(|r| SequenceFigures {
                    prompt_tokens: r.prompt_tokens,
                    generated_tokens: r.generated,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_land_in_the_chart_and_the_now_figure() {
        let live = LiveStats::default();
        let t0 = live.started;
        // 10 tokens in second 3, 20 in second 4.
        for i in 0..10 {
            live.token(0, t0 + Duration::from_millis(3000 + i * 10), None);
        }
        for i in 0..20 {
            live.token(0, t0 + Duration::from_millis(4000 + i * 10), None);
        }
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let snap = live.snapshot_at(t0 + Duration::from_millis(6500), wall);
        assert_eq!(snap.history.len() as u64, HISTORY_SECONDS / POINT_SECONDS);
        // The last whole interval is seconds 4..6 (20 tokens), the one before 2..4 (10).
        let last = snap.history[snap.history.len() - 1];
        let before = snap.history[snap.history.len() - 2];
        assert_eq!(last.tokens_per_second, 10.0);
        assert_eq!(before.tokens_per_second, 5.0);
        assert_eq!(last.t, 1_000_000_000 - 500);
        assert_eq!(before.t, last.t - 2000);
        // The window 2.0 .. 6.5 holds all 30 tokens.
        assert!(
            (snap.tokens_per_second - 30.0 / 4.5).abs() < 1e-9,
            "{}",
            snap.tokens_per_second
        );
        // Later, everything has left the window and the chart.
        let snap = live.snapshot_at(t0 + Duration::from_secs(HISTORY_SECONDS + 10), wall);
        assert_eq!(snap.tokens_per_second, 0.0);
        assert!(snap.history.iter().all(|p| p.tokens_per_second == 0.0));
    }

    #[test]
    fn old_buckets_are_dropped() {
        let live = LiveStats::default();
        for s in 0..(HISTORY_SECONDS * 3) {
            live.token(0, live.started + Duration::from_secs(s), None);
        }
        assert!(live.lock().buckets.len() as u64 <= HISTORY_SECONDS + POINT_SECONDS + 1);
    }

    #[test]
    fn a_generation_reports_its_speed_and_first_token_time() {
        let live = LiveStats::default();
        let other = live.generation_started(3);
        let id = live.generation_started(7);
        let start = Instant::now();
        live.token(id, start, Some(Duration::from_millis(250)));
        let running = live.snapshot().running_sequences;
        assert_eq!(running.len(), 2);
        assert_eq!(
            (running[1].prompt_tokens, running[1].generated_tokens),
            (7, 1)
        );
        live.token(id, start, None);
        live.token(id, start, None);
        std::thread::sleep(Duration::from_millis(20));
        live.generation_finished(id);
        let snap = live.snapshot();
        assert_eq!(snap.running_sequences.len(), 1);
        live.generation_finished(other);
        let last = snap.last_generation.unwrap();
        assert_eq!((last.prompt_tokens, last.completion_tokens), (7, 3));
        assert_eq!(last.time_to_first_token_s, Some(0.25));
        assert!(last.tokens_per_second.unwrap() > 0.0);
        assert_eq!(
            snap.time_to_first_token,
            TtftFigures {
                last_s: Some(0.25),
                mean_s: Some(0.25),
                count: 1
            }
        );
    }

    #[test]
    fn only_generation_routes_are_counted() {
        let live = LiveStats::default();
        live.count_request("/v1/chat/completions", 200);
        live.count_request("/v1/completions", 200);
        live.count_request("/v1/chat/completions", 400);
        live.count_request("/health", 200);
        live.count_request("other", 200);
        let snap = live.snapshot();
        assert_eq!(snap.requests_total, 3);
        assert_eq!(snap.requests_by_status.get("200"), Some(&2));
        assert_eq!(snap.requests_by_status.get("400"), Some(&1));
    }
}
