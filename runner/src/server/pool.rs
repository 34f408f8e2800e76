//! The model pool: which of the served models are in memory. A request asks the
//! pool for its model; a model not in memory is loaded then (one load at a time, on
//! the blocking pool), and every request that asks while it loads waits for that
//! same load. Before a load, the least recently used models are unloaded until the
//! new one fits `--max-loaded-models` and `--memory-budget`.
//!
//! Unloading drops the pool's handle only: requests already holding the model
//! finish, and its worker thread ends (freeing the engine) after them. Each loaded
//! model has its own worker, but all workers share one turn per step (see
//! `queue::GenerationTurn`), so one forward pass runs at a time in the process.
//!
//! A failed load leaves the model unloaded with the error recorded (shown in
//! `/health`); every request waiting for it gets the error, and the next request
//! tries again, so a file fixed on disk needs no restart.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use super::catalog::ModelEntry;
use super::errors::ApiError;
use super::state::ServedModel;

/// Loads models for the pool. Both methods block (they read files).
pub trait Loader: Send + Sync + 'static {
    /// Bytes the model will take once loaded: weights plus KV cache.
    fn estimate(&self, id: &str, path: &Path) -> anyhow::Result<u64>;
    /// Loads the model and starts its worker.
    fn load(&self, id: &str, path: &Path) -> anyhow::Result<ServedModel>;
}

/// How many models, and how much memory, the loaded models may take together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_loaded: Option<usize>,
    pub memory_budget: Option<u64>,
}

/// One model as `/health`, `/metrics` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStatus {
    pub id: String,
    /// `loaded`, `loading` or `unloaded`.
    pub state: &'static str,
    /// Estimated bytes in memory (weights plus KV cache), once estimated.
    pub bytes: Option<u64>,
    /// Unix seconds of the last request for it.
    pub last_used: Option<u64>,
    /// Completed loads since start.
    pub loads: u64,
    /// Why the last load failed, until a load succeeds.
    pub error: Option<String>,
}

type LoadResult = Option<Result<Arc<ServedModel>, ApiError>>;

enum Phase {
    Unloaded,
    /// Waiters subscribe; the value becomes `Some` when the load ends.
    Loading(watch::Receiver<LoadResult>),
    Loaded(Arc<ServedModel>),
}

struct Slot {
    entry: ModelEntry,
    phase: Phase,
    bytes: Option<u64>,
    last_used: Option<SystemTime>,
    /// The pool's clock at the last request: orders models for eviction.
    used_at: u64,
    loads: u64,
    error: Option<String>,
}

struct Slots {
    list: Vec<Slot>,
    clock: u64,
}

struct Inner {
    loader: Arc<dyn Loader>,
    limits: Limits,
    slots: Mutex<Slots>,
    /// Held for a whole load, from the estimate to the published model.
    load_turn: tokio::sync::Mutex<()>,
    /// Unix seconds of the configuration: `created` in /v1/models.
    created: u64,
}

/// The served models. Empty until [`ModelPool::configure`] (the service then
/// answers 503 "loading").
#[derive(Default)]
pub struct ModelPool {
    inner: OnceLock<Arc<Inner>>,
}

impl ModelPool {
    /// Sets the models and how to load them; once.
    pub fn configure(
        &self,
        entries: Vec<ModelEntry>,
        loader: Arc<dyn Loader>,
        limits: Limits,
    ) -> anyhow::Result<()> {
        let list = entries
            .into_iter()
            .map(|entry| Slot {
                entry,
                phase: Phase::Unloaded,
                bytes: None,
                last_used: None,
                used_at: 0,
                loads: 0,
                error: None,
            })
            .collect();
        let inner = Arc::new(Inner {
            loader,
            limits,
            slots: Mutex::new(Slots { list, clock: 0 }),
            load_turn: tokio::sync::Mutex::new(()),
            created: super::completions::unix_now(),
        });
        self.inner
            .set(inner)
            .map_err(|_| anyhow::anyhow!("the model pool was configured twice"))
    }

    /// A pool of one model, already loaded (for handler tests).
    #[cfg(test)]
    pub fn preloaded(model: ServedModel) -> ModelPool {
        struct NoLoader;
        impl Loader for NoLoader {
            fn estimate(&self, _: &str, _: &Path) -> anyhow::Result<u64> {
                anyhow::bail!("preloaded")
            }
            fn load(&self, _: &str, _: &Path) -> anyhow::Result<ServedModel> {
                anyhow::bail!("preloaded")
            }
        }
        let pool = ModelPool::default();
        let entry = ModelEntry {
            id: model.id.clone(),
            path: model.id.clone().into(),
        };
        pool.configure(vec![entry], Arc::new(NoLoader), Limits::default())
            .unwrap();
        pool.inner.get().unwrap().lock().list[0].phase = Phase::Loaded(Arc::new(model));
        pool
    }

    /// Unix seconds when the models were configured.
    pub fn created(&self) -> u64 {
        self.inner.get().map_or(0, |inner| inner.created)
    }

    /// The served ids, in the order given; empty before configuration.
    pub fn ids(&self) -> Vec<String> {
        self.inner.get().map_or_else(Vec::new, |inner| inner.ids())
    }

    /// The model a request names (`None`: the only one), loading it first if needed.
    pub async fn get(&self, requested: Option<&str>) -> Result<Arc<ServedModel>, ApiError> {
        let inner = self.inner.get().ok_or_else(ApiError::loading)?;
        let mut loading = {
            let mut slots = inner.lock();
            let index = inner.find(&slots, requested)?;
            slots.clock += 1;
            let clock = slots.clock;
            let slot = &mut slots.list[index];
            slot.used_at = clock;
            slot.last_used = Some(SystemTime::now());
            match &slot.phase {
                Phase::Loaded(model) => return Ok(model.clone()),
                Phase::Loading(waiting) => waiting.clone(),
                Phase::Unloaded => {
                    let (done, waiting) = watch::channel(None);
                    slot.phase = Phase::Loading(waiting.clone());
                    tokio::spawn(load(inner.clone(), index, done));
                    waiting
                }
            }
        };
        let result = loading
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ApiError::internal("the model load ended without a result"))?;
        result
            .clone()
            .unwrap_or_else(|| Err(ApiError::internal("the model load ended without a result")))
    }

    /// Every model's state, in the order given.
    pub fn status(&self) -> Vec<ModelStatus> {
        let Some(inner) = self.inner.get() else {
            return Vec::new();
        };
        let slots = inner.lock();
        slots.list.iter().map(Slot::status).collect()
    }

    /// The models in memory.
    pub fn loaded(&self) -> Vec<Arc<ServedModel>> {
        let Some(inner) = self.inner.get() else {
            return Vec::new();
        };
        let slots = inner.lock();
        slots
            .list
            .iter()
            .filter_map(|slot| match &slot.phase {
                Phase::Loaded(model) => Some(model.clone()),
                _ => None,
            })
            .collect()
    }

    /// The model in memory that was used last (the only one when one is served).
    pub fn latest(&self) -> Option<Arc<ServedModel>> {
        let inner = self.inner.get()?;
        let slots = inner.lock();
        slots
            .list
            .iter()
            .filter(|slot| matches!(slot.phase, Phase::Loaded(_)))
            .max_by_key(|slot| slot.used_at)
            .and_then(|slot| match &slot.phase {
                Phase::Loaded(model) => Some(model.clone()),
                _ => None,
            })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The data stays consistent even if a holder panicked: every change is one
        // assignment.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ids(&self) -> Vec<String> {
        self.lock()
            .list
            .iter()
            .map(|slot| slot.entry.id.clone())
            .collect()
    }

    fn find(&self, slots: &Slots, requested: Option<&str>) -> Result<usize, ApiError> {
        let ids = || {
            slots
                .list
                .iter()
                .map(|s| s.entry.id.clone())
                .collect::<Vec<_>>()
        };
        match requested {
            None if slots.list.len() == 1 => Ok(0),
            None => Err(ApiError::model_required(&ids())),
            Some(id) => slots
                .list
                .iter()
                .position(|slot| slot.entry.id == id)
                .ok_or_else(|| ApiError::model_not_found(id, &ids())),
        }
    }

    /// Unloads the least recently used models until `need` more bytes and one more
    /// model fit the limits; returns them (to be dropped outside the lock).
    fn make_room(&self, index: usize, need: u64) -> Result<Vec<Arc<ServedModel>>, String> {
        if let Some(budget) = self.limits.memory_budget {
            if need > budget {
                return Err(format!(
                    "it needs about {} (weights plus KV cache), more than --memory-budget {}; \
                     raise the budget or lower --ctx",
                    human_bytes(need),
                    human_bytes(budget)
                ));
            }
        }
        let mut slots = self.lock();
        let new_id = slots.list[index].entry.id.clone();
        let mut unloaded = Vec::new();
        loop {
            let resident: Vec<usize> = (0..slots.list.len())
                .filter(|&i| i != index && matches!(slots.list[i].phase, Phase::Loaded(_)))
                .collect();
            let bytes: u64 = resident
                .iter()
                .map(|&i| slots.list[i].bytes.unwrap_or(0))
                .sum::<u64>()
                + need;
            let too_many = self
                .limits
                .max_loaded
                .is_some_and(|max| resident.len() + 1 > max);
            let too_big = self.limits.memory_budget.is_some_and(|b| bytes > b);
            if !(too_many || too_big) {
                return Ok(unloaded);
            }
            let Some(&oldest) = resident.iter().min_by_key(|&&i| slots.list[i].used_at) else {
                return Ok(unloaded);
            };
            let slot = &mut slots.list[oldest];
            tracing::info!(
                "unloading model `{}` (least recently used) to make room for `{}`",
                slot.entry.id,
                new_id
            );
            if let Phase::Loaded(model) = std::mem::replace(&mut slot.phase, Phase::Unloaded) {
                unloaded.push(model);
            }
        }
    }
}

impl Slot {
    fn status(&self) -> ModelStatus {
        ModelStatus {
            id: self.entry.id.clone(),
            state: match self.phase {
                Phase::Unloaded => "unloaded",
                Phase::Loading(_) => "loading",
                Phase::Loaded(_) => "loaded",
            },
            bytes: self.bytes,
            last_used: self.last_used.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            loads: self.loads,
            error: self.error.clone(),
        }
    }
}

/// Loads the model at `index`: waits for the turn, estimates, makes room, loads,
/// publishes, and tells every waiter.
async fn load(inner: Arc<Inner>, index: usize, done: watch::Sender<LoadResult>) {
    let _turn = inner.load_turn.lock().await;
    let entry = inner.lock().list[index].entry.clone();
    tracing::info!("loading model `{}` from {}", entry.id, entry.path.display());
    let outcome = prepare_and_load(&inner, index, &entry).await;
    let mut slots = inner.lock();
    let slot = &mut slots.list[index];
    let result = match outcome {
        Ok((model, bytes)) => {
            let model = Arc::new(model);
            tracing::info!(
                "model `{}` loaded ({}, about {})",
                entry.id,
                model.device,
                bytes.map_or_else(|| "size unknown".to_owned(), human_bytes)
            );
            slot.phase = Phase::Loaded(model.clone());
            slot.bytes = bytes;
            slot.loads += 1;
            slot.error = None;
            Ok(model)
        }
        Err(why) => {
            tracing::error!("model `{}` failed to load: {why}", entry.id);
            slot.phase = Phase::Unloaded;
            slot.error = Some(why.clone());
            Err(ApiError::model_load_failed(&entry.id, &why))
        }
    };
    drop(slots);
    // Nobody waiting (every client left) is fine: the model stays loaded.
    let _ = done.send(Some(result));
}

async fn prepare_and_load(
    inner: &Arc<Inner>,
    index: usize,
    entry: &ModelEntry,
) -> Result<(ServedModel, Option<u64>), String> {
    let limited = inner.limits != Limits::default();
    let estimate = {
        let (loader, entry) = (inner.loader.clone(), entry.clone());
        blocking(move || loader.estimate(&entry.id, &entry.path)).await
    };
    // Without limits the estimate is only shown, so a model whose size cannot be
    // estimated still loads.
    let bytes = match estimate {
        Ok(bytes) => Some(bytes),
        Err(why) if limited => return Err(why),
        Err(why) => {
            tracing::warn!("cannot estimate the memory of `{}`: {why}", entry.id);
            None
        }
    };
    let unloaded = inner.make_room(index, bytes.unwrap_or(0))?;
    // The pool's handles go now; each worker ends after its running requests.
    drop(unloaded);
    let (loader, entry) = (inner.loader.clone(), entry.clone());
    let model = blocking(move || loader.load(&entry.id, &entry.path)).await?;
    Ok((model, bytes))
}

/// Runs `f` on the blocking pool; errors (and panics) become one message.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(format!("the loader failed: {e}")),
    }
}

/// `1.5 GiB`: bytes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::server::metrics::Metrics;
    use crate::server::openai::PlainMessage;
    use crate::server::queue::testing::{FakeBackend, FakeEngine};
    use crate::server::queue::Scheduler;
    use crate::server::state::Prompter;

    struct NoPrompts;

    impl Prompter for NoPrompts {
        fn chat(&self, _: &[PlainMessage]) -> Result<Vec<u32>, ApiError> {
            Ok(vec![1])
        }
        fn text(&self, _: &str) -> Result<Vec<u32>, ApiError> {
            Ok(vec![1])
        }
        fn vocab_size(&self) -> usize {
            2
        }
    }

    /// Loads in 100 ms; sizes by id; ids starting with `bad` fail.
    #[derive(Default)]
    struct Fake {
        loads: Mutex<Vec<String>>,
        sizes: HashMap<String, u64>,
        running: AtomicUsize,
    }

    impl Loader for Arc<Fake> {
        fn estimate(&self, id: &str, _: &Path) -> anyhow::Result<u64> {
            Ok(self.sizes.get(id).copied().unwrap_or(100))
        }
        fn load(&self, id: &str, _: &Path) -> anyhow::Result<ServedModel> {
            let at_once = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(100));
            self.running.fetch_sub(1, Ordering::SeqCst);
            assert_eq!(at_once, 1, "two loads ran at once");
            self.loads.lock().unwrap().push(id.to_owned());
            if id.starts_with("bad") {
                anyhow::bail!("{id} is not a model");
            }
            Ok(ServedModel {
                id: id.to_owned(),
                device: "test".into(),
                context_length: 8,
                parallel_requested: 1,
                max_tokens_default: 1,
                created: 0,
                prompter: Arc::new(NoPrompts),
                scheduler: Scheduler::start(
                    FakeBackend::new(FakeEngine::new(1, 8)),
                    1,
                    Arc::new(Metrics::new()),
                )?,
                engine: None,
                facts: Default::default(),
                device_map: None,
            })
        }
    }

    fn pool(ids: &[&str], limits: Limits, sizes: &[(&str, u64)]) -> (ModelPool, Arc<Fake>) {
        let fake = Arc::new(Fake {
            sizes: sizes.iter().map(|(i, s)| (i.to_string(), *s)).collect(),
            ..Default::default()
        });
        let entries = ids
            .iter()
            .map(|id| ModelEntry {
                id: id.to_string(),
                path: format!("/m/{id}.gguf").into(),
            })
            .collect();
        let pool = ModelPool::default();
        pool.configure(entries, Arc::new(fake.clone()), limits)
            .unwrap();
        (pool, fake)
    }

    fn states(pool: &ModelPool) -> Vec<(String, &'static str)> {
        pool.status().into_iter().map(|s| (s.id, s.state)).collect()
    }

    fn loaded(pool: &ModelPool) -> Vec<String> {
        let mut ids: Vec<String> = pool.loaded().iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn requests_during_a_load_wait_for_that_load() {
        let (pool, fake) = pool(&["a", "b"], Limits::default(), &[]);
        let (first, second, third) = tokio::join!(
            pool.get(Some("a")),
            pool.get(Some("a")),
            pool.get(Some("b"))
        );
        assert_eq!(first.unwrap().id, "a");
        assert_eq!(second.unwrap().id, "a");
        assert_eq!(third.unwrap().id, "b");
        let mut loads = fake.loads.lock().unwrap().clone();
        loads.sort();
        assert_eq!(loads, ["a", "b"]);
        assert_eq!(pool.status()[0].loads, 1);
        assert_eq!(pool.status()[0].bytes, Some(100));
    }

    #[tokio::test]
    async fn the_least_recently_used_model_goes_first() {
        let limits = Limits {
            max_loaded: Some(2),
            memory_budget: None,
        };
        let (pool, fake) = pool(&["a", "b", "c"], limits, &[]);
        pool.get(Some("a")).await.unwrap();
        pool.get(Some("b")).await.unwrap();
        pool.get(Some("a")).await.unwrap();
        pool.get(Some("c")).await.unwrap();
        assert_eq!(loaded(&pool), ["a", "c"]);
        assert_eq!(states(&pool)[1], ("b".to_owned(), "unloaded"));
        // b comes back in place of a, now the least recently used.
        pool.get(Some("b")).await.unwrap();
        assert_eq!(loaded(&pool), ["b", "c"]);
        assert_eq!(*fake.loads.lock().unwrap(), ["a", "b", "c", "b"]);
    }

    #[tokio::test]
    async fn the_memory_budget_unloads_until_the_new_model_fits() {
        let limits = Limits {
            max_loaded: None,
            memory_budget: Some(1000),
        };
        let sizes = [("a", 400), ("b", 400), ("c", 500), ("huge", 1001)];
        let (pool, _) = pool(&["a", "b", "c", "huge"], limits, &sizes);
        pool.get(Some("a")).await.unwrap();
        pool.get(Some("b")).await.unwrap();
        assert_eq!(loaded(&pool), ["a", "b"]);
        pool.get(Some("c")).await.unwrap();
        assert_eq!(loaded(&pool), ["b", "c"]);
        let error = pool.get(Some("huge")).await.err().unwrap();
        assert_eq!(error.code, Some("model_load_failed"));
        assert!(
            error.message.contains("--memory-budget"),
            "{}",
            error.message
        );
        // A model too big for the budget unloads nothing.
        assert_eq!(loaded(&pool), ["b", "c"]);
    }

    #[tokio::test]
    async fn a_failed_load_is_reported_and_retried() {
        let (pool, fake) = pool(&["a", "bad"], Limits::default(), &[]);
        let (one, two) = tokio::join!(pool.get(Some("bad")), pool.get(Some("bad")));
        for error in [one.err().unwrap(), two.err().unwrap()] {
            assert_eq!(error.status.as_u16(), 500);
            assert!(
                error
                    .message
                    .contains("`bad` failed to load: bad is not a model"),
                "{}",
                error.message
            );
        }
        let status = &pool.status()[1];
        assert_eq!(status.state, "unloaded");
        assert_eq!(status.error.as_deref(), Some("bad is not a model"));
        // The others are unharmed, and the next request tries again.
        pool.get(Some("a")).await.unwrap();
        assert!(pool.get(Some("bad")).await.is_err());
        assert_eq!(*fake.loads.lock().unwrap(), ["bad", "a", "bad"]);
    }

    #[tokio::test]
    async fn unknown_and_missing_ids_name_the_served_ones() {
        let (pool, _) = pool(&["a", "b"], Limits::default(), &[]);
        let error = pool.get(Some("zzz")).await.err().unwrap();
        assert_eq!(error.status.as_u16(), 404);
        assert!(error.message.contains("`zzz`"), "{}", error.message);
        assert!(error.message.contains("`a`, `b`"), "{}", error.message);
        let error = pool.get(None).await.err().unwrap();
        assert_eq!(error.status.as_u16(), 400);
        assert_eq!(error.param.as_deref(), Some("model"));
        // One model needs no name.
        let (single, _) = self::pool(&["only"], Limits::default(), &[]);
        assert_eq!(single.get(None).await.unwrap().id, "only");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
