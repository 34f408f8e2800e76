//! `xpu-runner serve`: the OpenAI-compatible HTTP service.
//!
//! Start-up order, chosen so that systemd and load balancers always see the truth:
//! bind the listener (or take systemd's socket) first, answer `/health` with 503
//! while the model loads on a blocking thread, then publish the model, send
//! `READY=1` and answer 200. On SIGTERM/SIGINT the service sends `STOPPING=1`, stops
//! accepting connections, answers new requests on open connections with 503, lets
//! in-flight requests finish for up to `--shutdown-timeout` seconds and exits 0.
//!
//! With several models (`--model` repeated, `--models-dir`), the service is ready
//! once it knows them, and each loads on its first request (see `pool`).
//!
//! Generation runs on a dedicated worker thread per loaded model, fed by a bounded
//! queue: it batches up to `--parallel` sequences per step (see `queue`). The workers
//! share one turn per step, so two models interleave their steps.

pub mod auth;
pub mod backend;
pub mod catalog;
pub mod completions;
pub mod config;
pub mod dashboard;
pub mod errors;
pub mod listen;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod queue;
pub mod routes;
pub mod shutdown;
pub mod state;
pub mod systemd;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::{EngineArgs, ServeArgs};

use crate::device::{self, read_facts, DeviceChoice};
use crate::model::LoadOptions;
use auth::ApiKeys;
use metrics::Metrics;
use pool::Limits;
use queue::GenerationTurn;
use shutdown::Lifecycle;
use state::AppState;
use telemetry::GpuTelemetry;

/// Runs the service until a termination signal; returns when it has drained.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xpu-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Started before the listener so that the first reading is on its way while the
    // model loads; it never blocks (the readings come from a child process).
    let gpu = Arc::new(if args.no_gpu_telemetry {
        GpuTelemetry::off()
    } else {
        GpuTelemetry::start(args.gpu_telemetry_interval)
    });
    let result = runtime.block_on(serve(args, gpu.clone()));
    // Whatever ended the service (drained, or failed to start): kill the telemetry
    // child now rather than leave it to the kernel when this process exits.
    if gpu.stop() {
        tracing::info!("GPU telemetry stopped");
    }
    // Do not wait for a model load still running on the blocking pool.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn serve(args: ServeArgs, gpu: Arc<GpuTelemetry>) -> anyhow::Result<()> {
    let keys = args
        .api_key_file
        .as_deref()
        .map(ApiKeys::from_file)
        .transpose()?;
    if let Some(keys) = &keys {
        tracing::info!("API keys required ({} accepted keys)", keys.len());
    }

    let listener = match systemd::activated_listener()? {
        Some(std_listener) => {
            std_listener.set_nonblocking(true)?;
            tracing::info!(
                "using the socket passed by systemd (socket activation); --host/--port are ignored"
            );
            tokio::net::TcpListener::from_std(std_listener)?
        }
        None => bind(&args.host, args.port).await?,
    };
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && keys.is_none() {
        tracing::warn!(
            "!!! listening on {local}, which other machines can reach, WITHOUT an API key: anyone on \
             the network can use this server. Set --api-key-file, or bind 127.0.0.1 !!!"
        );
    }
    tracing::info!("listening on http://{local}");

    let lifecycle = Arc::new(Lifecycle::default());
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState {
        lifecycle: lifecycle.clone(),
        metrics: metrics.clone(),
        keys,
        max_body_bytes: args.max_body_bytes,
        models: Default::default(),
        gpu: gpu.clone(),
        dashboard: Default::default(),
    });
    tokio::spawn(telemetry::log_first_outcome(gpu));
    let app = routes::router(state.clone(), &args.cors_allow_origin);
    systemd::status(&format!(
        "loading {} (listening on {local})",
        args.model.join(", ")
    ));

    if let Some(interval) = systemd::watchdog_interval() {
        tracing::info!("systemd watchdog enabled: pinging every {:?}", interval);
        let state = state.clone();
        tokio::spawn(systemd::watchdog_loop(interval, move || {
            state
                .models
                .loaded()
                .iter()
                .all(|m| m.scheduler.worker_alive())
        }));
    }

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    {
        let state = state.clone();
        let args = args.clone();
        tokio::spawn(async move {
            match load_and_publish(&args, &state, local).await {
                Ok(()) => {}
                Err(e) => {
                    let _ = load_failed_tx.send(e);
                }
            }
        });
    }

    let server = {
        let lifecycle = lifecycle.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { lifecycle.drain_started().await })
                .await
        })
    };
    tokio::pin!(server);

    tokio::select! {
        signal = shutdown::first_signal() => {
            let signal = signal.context("cannot install signal handlers")?;
            tracing::info!("{signal} received: draining (up to {} s for in-flight requests)", args.shutdown_timeout);
        }
        Ok(error) = load_failed_rx => {
            systemd::status(&format!("failed: {error:#}"));
            return Err(error);
        }
        result = &mut server => {
            return Err(anyhow::anyhow!("the HTTP server stopped unexpectedly: {:?}", result));
        }
    }

    let in_flight = metrics.requests_in_flight.get();
    systemd::stopping(&format!("draining: {in_flight} requests in flight"));
    lifecycle.begin_drain();
    if tokio::time::timeout(Duration::from_secs(args.shutdown_timeout), &mut server)
        .await
        .is_ok()
    {
        tracing::info!("all requests finished; exiting");
        return Ok(());
    }
    tracing::warn!(
        "{} requests were still running after --shutdown-timeout {} s; aborting them",
        metrics.requests_in_flight.get(),
        args.shutdown_timeout
    );
    // Generations end at their next token with finish_reason "abort"; give the
    // answers a moment to reach their clients.
    for model in state.models.loaded() {
        model.scheduler.abort_all();
    }
    if tokio::time::timeout(ABORT_GRACE, &mut server)
        .await
        .is_err()
    {
        tracing::warn!(
            "{} requests did not end after the abort; exiting anyway",
            metrics.requests_in_flight.get()
        );
    }
    Ok(())
}

/// How long aborted requests may take to send their last answer after the
/// shutdown timeout: one token step and the write.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Binds the first of `--host`'s addresses that can be bound.
async fn bind(host: &listen::Host, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in host.socket_addrs(port).await? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                tracing::debug!("cannot bind {addr}: {e}");
                last_error = Some((addr, e));
            }
        }
    }
    let (addr, error) = last_error.context("no address to bind")?;
    Err(anyhow::Error::new(error).context(format!(
        "cannot listen on {addr} (--host {host}); is another service using the port? choose another with --port"
    )))
}

/// Decides the device, finds the models and, with one model, loads it; then marks
/// the service ready.
async fn load_and_publish(
    args: &ServeArgs,
    state: &Arc<AppState>,
    local: SocketAddr,
) -> anyhow::Result<()> {
    // The facts are read whatever the device: `auto` decides from them, and the
    // dashboard shows them. Only `auto` waits for them (and fails without them).
    let facts_file = args.facts.clone();
    let reading = tokio::task::spawn_blocking(move || read_facts(facts_file.as_deref()));
    let facts = if args.device == DeviceChoice::Auto {
        let (document, summary) = reading.await??;
        state.dashboard.set_facts(Ok(document));
        Some(summary)
    } else {
        let state = state.clone();
        tokio::spawn(async move {
            let facts = match reading.await {
                Ok(Ok((document, _))) => Ok(document),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = &facts {
                tracing::warn!("dashboard: no hardware facts: {why}");
            }
            state.dashboard.set_facts(facts);
        });
        None
    };
    if let Some(facts) = &facts {
        for warning in &facts.warnings {
            tracing::warn!("hardware facts: {warning}");
        }
    }
    let decision = device::decide(args.device, facts.as_ref());
    tracing::info!(
        "device {} chosen: {}",
        decision.device.name(),
        decision.reasons.join("; ")
    );

    let (models, single_id, dir) = (
        args.model.clone(),
        args.model_id.clone(),
        args.models_dir.clone(),
    );
    let entries = tokio::task::spawn_blocking(move || {
        catalog::collect(
            &models,
            single_id.as_deref(),
            dir.as_deref(),
            crate::hub::resolve_model,
        )
    })
    .await??;
    let loader = backend::EngineLoader {
        choice: args.device,
        decision,
        options: LoadOptions {
            threads: args.threads,
            ctx: args.ctx,
            slots: args.parallel,
            engine: args.engine.options(),
            ..LoadOptions::default()
        },
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk,
        kv_cache_tokens: args.kv_cache_tokens,
        max_tokens_default: args.max_tokens_default,
        metrics: state.metrics.clone(),
        turn: GenerationTurn::default(),
    };
    let limits = Limits {
        max_loaded: args.max_loaded_models,
        memory_budget: args.memory_budget,
    };
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    state.models.configure(entries, Arc::new(loader), limits)?;

    let status = if args.single_model() {
        // Today's one-model service: loaded now, ready after.
        let served = state
            .models
            .get(None)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let device = served.engine.as_ref().map_or("cpu", |e| e.device);
        format!(
            "serving {} on {device} ({}, {} slots of {} tokens) at http://{local}",
            served.id,
            served.device,
            served.scheduler.slots(),
            served.context_length
        )
    } else {
        format!(
            "serving {} models, each loaded on its first request ({}) at http://{local}",
            ids.len(),
            ids.join(", ")
        )
    };
    state.lifecycle.set_ready();
    tracing::info!("{status}");
    systemd::ready(&status);
    Ok(())
}
