//! The router: routes, the request gate (drain, API key), the one-line request log
//! and request metrics, body limits, CORS, and the small handlers (`/health`,
//! `/metrics`, `/v1/models`). The generation handlers live in `completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::completions::{chat_completions, completions};
use super::dashboard;
use super::errors::ApiError;
use super::openai::{ModelList, ModelObject};
use super::shutdown::Phase;
use super::state::AppState;
use super::telemetry;

/// Attached by a handler whose request logs itself later (streams log when they end).
#[derive(Clone, Copy)]
pub struct LoggedLater;

/// Attached by generation handlers so the request log line carries token counts.
#[derive(Clone, Copy)]
pub struct TokenSummary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Builds the application router.
pub fn router(state: Arc<AppState>, cors_allow_origin: &[String]) -> Router {
    let mut app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state);
    if !cors_allow_origin.is_empty() {
        app = app.layer(cors_layer(cors_allow_origin));
    }
    app
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            "x-api-key".parse().unwrap(),
        ])
}

/// The metrics label for a path: the route pattern, never the raw path (which a
/// client controls and could use to blow up the label set).
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p => dashboard::route_label(p).unwrap_or("other"),
    }
}

/// Every request passes here: drain and key checks, then the handler, then one
/// log line and the request counter.
async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = route_label(&path);
    // The dashboard page holds no data; its document (/v1/dashboard) needs the key.
    let public = path == "/health" || dashboard::is_page(&path);
    let response = if !public && path != "/metrics" && state.lifecycle.phase() == Phase::Draining {
        ApiError::draining().into_response()
    } else if let (false, Some(keys)) = (public, &state.keys) {
        match keys.check(request.headers()) {
            Ok(()) => next.run(request).await,
            Err(why) => ApiError::unauthorized(why).into_response(),
        }
    } else {
        next.run(request).await
    };
    let status = response.status().as_u16();
    state.metrics.count_request(route, status);
    if response.extensions().get::<LoggedLater>().is_none() {
        let tokens = response.extensions().get::<TokenSummary>().copied();
        log_request(&method, &path, status, started, tokens);
    }
    response
}

/// The one log line of a request.
pub fn log_request(
    method: &Method,
    path: &str,
    status: u16,
    started: Instant,
    tokens: Option<TokenSummary>,
) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let path = path.escape_debug().to_string();
    match tokens {
        Some(t) => tracing::info!(
            target: "xpu_runner::request",
            "{method} {path} {status} {ms:.1}ms prompt_tokens={} completion_tokens={}",
            t.prompt_tokens,
            t.completion_tokens
        ),
        None => tracing::info!(target: "xpu_runner::request", "{method} {path} {status} {ms:.1}ms"),
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; the API has POST /v1/chat/completions, POST /v1/completions, \
         GET /v1/models, GET /health, GET /metrics, GET /v1/dashboard and the dashboard page at /",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.lifecycle.phase() {
        Phase::Ready => {
            let loaded = state.models.loaded();
            let mut body = serde_json::json!({
                "status": "ok",
                "queue_depth": loaded.iter().map(|m| m.scheduler.waiting()).sum::<usize>(),
                "models": state.models.status(),
            });
            // One model: the fields every client of a one-model server reads.
            if let ([id], Some(model)) = (&state.models.ids()[..], loaded.first()) {
                body["model"] = serde_json::Value::from(id.as_str());
                body["device"] = serde_json::Value::from(model.device.as_str());
                body["context_length"] = serde_json::Value::from(model.context_length);
                body["parallel"] = serde_json::json!({
                    "requested": model.parallel_requested,
                    "slots": model.scheduler.slots(),
                    "batching": model.scheduler.slots() > 1,
                });
                if let Some(map) = &model.device_map {
                    body["devices"] = map.to_json();
                }
            }
            // A lost GPU fails its model's requests; the server keeps answering the rest.
            let lost: Vec<String> = loaded
                .iter()
                .filter_map(|m| {
                    let why = m.device_map.as_ref()?.lost()?;
                    Some(format!("{}: {why}", m.id))
                })
                .collect();
            if !lost.is_empty() {
                body["status"] = serde_json::Value::from("degraded");
                body["devices_lost"] = serde_json::Value::from(lost);
            }
            // Only when there is a reading: hosts without an Intel GPU see no field.
            if let Some(reading) = state.gpu.latest() {
                body["gpu"] = telemetry::health_json(&reading);
            }
            Json(body).into_response()
        }
        Phase::Draining => {
            let mut response = ApiError::draining().into_response();
            *response.body_mut() =
                axum::body::Body::from(health_body("draining", &ApiError::draining()));
            response
        }
        Phase::Loading => {
            let mut response = ApiError::loading().into_response();
            *response.body_mut() =
                axum::body::Body::from(health_body("loading", &ApiError::loading()));
            response
        }
    }
}

/// The 503 body of `/health`: the status word plus the OpenAI error object.
fn health_body(status: &str, error: &ApiError) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&error.to_json()).unwrap_or_default();
    value["status"] = serde_json::Value::from(status);
    value.to_string()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render_with(state.gpu.latest().as_ref(), &state.models.status()),
    )
        .into_response()
}

/// The served ids; 503 until the service is ready (the one model is loaded, or the
/// several are known).
fn served_ids(state: &AppState) -> Result<Vec<String>, ApiError> {
    if state.lifecycle.phase() == Phase::Loading {
        return Err(ApiError::loading());
    }
    Ok(state.models.ids())
}

fn model_object(state: &AppState, id: String) -> ModelObject {
    ModelObject {
        id,
        object: "model",
        created: state.models.created(),
        owned_by: "xpu",
    }
}

async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let data = served_ids(&state)?
        .into_iter()
        .map(|id| model_object(&state, id))
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let ids = served_ids(&state)?;
    if !ids.contains(&id) {
        return Err(ApiError::model_not_found(&id, &ids));
    }
    Ok(Json(model_object(&state, id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::ApiKeys;
    use crate::server::metrics::Metrics;
    use crate::server::shutdown::Lifecycle;
    use crate::server::telemetry::GpuTelemetry;
    use tower::ServiceExt;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(route_label("/v1/models/abc"), "/v1/models/{id}");
        assert_eq!(route_label("/etc/passwd"), "other");
    }

    fn state(keys: Option<&str>) -> Arc<AppState> {
        Arc::new(AppState {
            lifecycle: Arc::new(Lifecycle::default()),
            metrics: Arc::new(Metrics::new()),
            keys: keys.map(|k| ApiKeys::parse(k).unwrap()),
            max_body_bytes: 4096,
            models: Default::default(),
            gpu: Arc::new(GpuTelemetry::off()),
            dashboard: Default::default(),
        })
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        key: Option<&str>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let mut builder = axum::http::Request::builder().method(method).uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let body = if method == "POST" {
            r#"{"messages":[{"role":"user","content":"hi"}]}"#
        } else {
            ""
        };
        let response = app
            .clone()
            .oneshot(builder.body(axum::body::Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            retry,
        )
    }

    #[tokio::test]
    async fn loading_then_draining_answer_503() {
        let state = state(None);
        let app = router(state.clone(), &[]);
        let (status, body, retry) = call(&app, "GET", "/health", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "loading");
        assert_eq!(body["error"]["type"], "unavailable_error");
        assert_eq!(retry.as_deref(), Some("1"));
        let (status, body, _) = call(&app, "POST", "/v1/chat/completions", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "loading");
        assert_eq!(
            call(&app, "GET", "/v1/models", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );

        state.lifecycle.begin_drain();
        let (status, body, _) = call(&app, "GET", "/health", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "draining");
        let (status, body, _) = call(&app, "POST", "/v1/completions", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "shutting_down");
        // Metrics stay readable while draining, for the last scrape.
        assert_eq!(call(&app, "GET", "/metrics", None).await.0, StatusCode::OK);
        let metrics = state.metrics.render();
        assert!(
            metrics.contains(r#"xpu_requests_total{route="/health",status="503"} 2"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn keys_guard_everything_but_health() {
        let state = state(Some("secret"));
        let app = router(state, &[]);
        let (status, body, _) = call(&app, "GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(
            call(&app, "GET", "/metrics", Some("secret")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", "/health", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Unknown routes are not revealed to clients without a key.
        assert_eq!(
            call(&app, "GET", "/nope", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body, _) = call(&app, "GET", "/nope", Some("secret")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "not_found_error");
    }
}
