//! Several models in one `xpu-runner serve`, against the real binary and the real
//! SmolLM2 model (linked under other names): listed at once, loaded on first use
//! (a request during a load waits for that load), unloaded least recently used
//! first under `--max-loaded-models` and `--memory-budget`, a broken model answered
//! with a clear error while the others go on, and `/health` and `/metrics` showing
//! each model's state.

mod serve_support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use serve_support::{binary, model_path, request, Server};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .args(["--device", "cpu", "--ctx", "512", "--port", "0"])
        .args(["--no-gpu-telemetry"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    server
}

/// Links the test model into `dir` as `NAME.gguf` for each name.
fn link_models(dir: &Path, names: &[&str]) {
    for name in names {
        std::os::unix::fs::symlink(model_path(), dir.join(format!("{name}.gguf"))).unwrap();
    }
}

fn json(port: u16, path: &str) -> Value {
    let response = request(port, "GET", path, None).unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

fn chat(port: u16, model: Option<&str>) -> (u16, Value) {
    let model = model.map_or(String::new(), |m| format!(r#""model":"{m}","#));
    let body = format!(
        r#"{{{model}"messages":[{{"role":"user","content":"Say hi"}}],"max_tokens":3,"temperature":0}}"#
    );
    let response = request(port, "POST", "/v1/chat/completions", Some(&body)).unwrap();
    let value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

/// `id → (state, bytes, last_used, error)` from `/health`.
fn model_states(port: u16) -> Vec<(String, String)> {
    json(port, "/health")["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn state_of(port: u16, id: &str) -> String {
    model_states(port)
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("{id} not in /health"))
        .1
}

#[test]
fn two_models_load_on_demand_and_the_least_recent_is_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    link_models(dir.path(), &["first", "second"]);
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"this is not a GGUF file").unwrap();
    let arg = |id: &str, path: &Path| format!("{id}={}", path.display());
    let server = serve(
        &[
            "--model",
            &arg("a", &dir.path().join("first.gguf")),
            "--model",
            &arg("b", &dir.path().join("second.gguf")),
            "--model",
            &arg("broken", &broken),
            "--max-loaded-models",
            "1",
        ],
        &[],
    );
    let port = server.port;

    // Ready at once, nothing loaded, everything listed.
    let health = json(port, "/health");
    assert_eq!(health["status"], "ok");
    assert!(health.get("model").is_none(), "{health}");
    assert_eq!(
        model_states(port),
        [
            ("a".into(), "unloaded".into()),
            ("b".into(), "unloaded".into()),
            ("broken".into(), "unloaded".into())
        ]
    );
    let listed: Vec<String> = json(port, "/v1/models")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["a", "b", "broken"]);
    assert_eq!(json(port, "/v1/models/b")["id"], "b");

    // Unknown and missing model names.
    let (status, body) = chat(port, Some("nope"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`a`, `b`, `broken`"), "{message}");
    let (status, body) = chat(port, None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model");

    // Two requests at once for an unloaded model: one load, both answered.
    let both: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || chat(port, Some("a"))))
        .collect();
    for request in both {
        let (status, body) = request.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], "a");
    }
    assert_eq!(server.log().matches("loading model `a`").count(), 1);
    let health = json(port, "/health");
    let a = &health["models"][0];
    assert_eq!(a["state"], "loaded");
    assert_eq!(a["loads"], 1);
    assert!(a["bytes"].as_u64().unwrap() > 90_000_000, "{a}");
    assert!(a["last_used"].as_u64().unwrap() > 1_700_000_000, "{a}");

    // The second model takes the one place: the first is unloaded.
    let (status, body) = chat(port, Some("b"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(port, "a"), "unloaded");
    assert_eq!(state_of(port, "b"), "loaded");
    assert!(
        server
            .log()
            .contains("unloading model `a` (least recently used) to make room for `b`"),
        "{}",
        server.log()
    );

    // A broken model: a clear error, nothing unloaded for it, the server goes on.
    let (status, body) = chat(port, Some("broken"));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "model_load_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`broken` failed to load"), "{message}");
    assert!(message.contains("broken.gguf"), "{message}");
    let health = json(port, "/health");
    assert_eq!(health["models"][2]["state"], "unloaded");
    assert!(health["models"][2]["error"].is_string(), "{health}");
    assert_eq!(state_of(port, "b"), "loaded");
    let (status, _) = chat(port, Some("b"));
    assert_eq!(status, 200);

    let metrics = request(port, "GET", "/metrics", None).unwrap().body;
    for line in [
        r#"xpu_model_state{model="a",state="unloaded"} 1"#,
        r#"xpu_model_state{model="b",state="loaded"} 1"#,
        r#"xpu_model_state{model="broken",state="unloaded"} 1"#,
        r#"xpu_model_loads_total{model="a"} 1"#,
        r#"xpu_model_loads_total{model="broken"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"xpu_model_memory_bytes{model="b"} "#),
        "{metrics}"
    );

    let dashboard = json(port, "/v1/dashboard");
    assert_eq!(dashboard["models"].as_array().unwrap().len(), 3);
    assert_eq!(dashboard["model"]["id"], "b");
}

#[test]
fn a_models_directory_and_a_memory_budget_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    link_models(dir.path(), &["one", "two"]);
    // SmolLM2 Q4_1 with one 512-token slot needs about 135 MB: one fits, two do not.
    let server = serve(
        &[],
        &[
            ("XPU_RUNNER_MODELS_DIR", dir.path().to_str().unwrap()),
            ("XPU_RUNNER_MEMORY_BUDGET", "200M"),
            ("XPU_RUNNER_PARALLEL", "1"),
        ],
    );
    let port = server.port;
    assert_eq!(
        model_states(port),
        [
            ("one".into(), "unloaded".into()),
            ("two".into(), "unloaded".into())
        ]
    );
    assert_eq!(chat(port, Some("one")).0, 200);
    assert_eq!(chat(port, Some("two")).0, 200);
    assert_eq!(
        model_states(port),
        [
            ("one".into(), "unloaded".into()),
            ("two".into(), "loaded".into())
        ]
    );
}

#[test]
fn a_budget_smaller_than_the_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    link_models(dir.path(), &["one", "two"]);
    let server = serve(
        &[
            "--models-dir",
            dir.path().to_str().unwrap(),
            "--memory-budget",
            "10M",
        ],
        &[],
    );
    let (status, body) = chat(server.port, Some("one"));
    assert_eq!(status, 500, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more than --memory-budget 10.0 MiB"),
        "{message}"
    );
}
