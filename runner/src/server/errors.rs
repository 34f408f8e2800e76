//! The one error type of the HTTP API. Every failure a client can cause becomes an
//! [`ApiError`], which renders as the OpenAI error object
//! `{"error":{"message","type","param","code"}}` with the matching HTTP status, so
//! that the official clients raise the right exception class.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error: status, OpenAI `type`, human message and the offending parameter.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for the `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
    /// Extra fields for context overflow (llama.cpp's `n_prompt_tokens`, `n_ctx`); boxed,
    /// because they are rare and every handler returns this type by value.
    pub context: Option<Box<(usize, usize)>>,
}

/// The JSON body of an error, shared with SSE error chunks.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_prompt_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<usize>,
}

/// `a`, `b`, `c`: ids as an error message lists them.
fn quoted_list(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
    quoted.join(", ")
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            context: None,
        }
    }

    /// 400 for a parameter with a bad value; names the parameter.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.into());
        e.code = Some("invalid_value");
        e
    }

    /// 400 for a request that is not valid JSON or not the expected shape.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 when prompt plus requested tokens do not fit the context window.
    pub fn context_overflow(prompt_tokens: usize, ctx: usize) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "exceed_context_size_error",
            format!(
                "the prompt has {prompt_tokens} tokens but a sequence may hold {ctx} tokens \
                 (its KV-cache slot, with at least one generated token); shorten the prompt, or \
                 restart the server with a larger --ctx (or --kv-cache-tokens, which is split \
                 over the --parallel slots)"
            ),
        );
        e.param = Some("messages".into());
        e.code = Some("context_length_exceeded");
        e.context = Some(Box::new((prompt_tokens, ctx)));
        e
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "not_found_error", message);
        e.code = Some("not_found");
        e
    }

    /// 404 for a model id the server does not serve; names the ones it does.
    pub fn model_not_found(requested: &str, known: &[String]) -> Self {
        let mut e = Self::not_found(format!(
            "the model `{requested}` does not exist; this server serves {} (see GET /v1/models)",
            quoted_list(known)
        ));
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 400 for a request without `model` to a server with several models.
    pub fn model_required(known: &[String]) -> Self {
        let mut e = Self::invalid_param(
            "model",
            format!(
                "`model` is required: this server serves several models, {} (see GET /v1/models)",
                quoted_list(known)
            ),
        );
        e.code = Some("model_required");
        e
    }

    /// 500 for a model that could not be loaded; says why. The next request for it
    /// tries again.
    pub fn model_load_failed(id: &str, why: &str) -> Self {
        let mut e = Self::internal(format!("the model `{id}` failed to load: {why}"));
        e.param = Some("model".into());
        e.code = Some("model_load_failed");
        e
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("method {method} is not allowed on {path}"),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is larger than the limit of {limit} bytes; send a smaller \
                 request or raise --max-body-bytes"
            ),
        );
        e.code = Some("request_too_large");
        e
    }

    pub fn queue_full(max_queue: usize, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is busy: {max_queue} requests are already waiting; retry after \
                 {retry_after} s or raise --max-queue"
            ),
        );
        e.code = Some("queue_full");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn loading() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "the model is still loading; retry when GET /health answers 200",
        );
        e.code = Some("loading");
        e.retry_after = Some(1);
        e
    }

    pub fn draining() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "the server is shutting down and accepts no new requests",
        );
        e.code = Some("shutting_down");
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON text of the error object, for HTTP bodies and SSE error chunks.
    pub fn to_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
                n_prompt_tokens: self.context.as_deref().map(|c| c.0),
                n_ctx: self.context.as_deref().map(|c| c.1),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_overflow_names_both_sizes() {
        let json: serde_json::Value =
            serde_json::from_str(&ApiError::context_overflow(900, 512).to_json()).unwrap();
        assert_eq!(json["error"]["type"], "exceed_context_size_error");
        assert_eq!(json["error"]["n_prompt_tokens"], 900);
        assert_eq!(json["error"]["n_ctx"], 512);
        let message = json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("900") && message.contains("512"),
            "{message}"
        );
        assert!(
            message.contains("--ctx") && message.contains("--kv-cache-tokens"),
            "{message}"
        );
    }

    #[test]
    fn queue_full_sets_retry_after() {
        let response = ApiError::queue_full(4, 3).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
