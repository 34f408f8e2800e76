//! The dashboard's JSON document (`GET /v1/dashboard`) and its page, from the real
//! binary with the real test model. Hardware facts come from the probe library run on
//! the probe's fixture trees (an Arc A770 machine, a server with only a BMC display),
//! so the document is checked against what `xpu-probe` really writes. The page itself
//! is tested in a browser by tests/api/test_dashboard.py.

mod serve_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_support::{request, request_with_headers, serve_command, Server};

/// Writes the facts the probe finds in fixture tree `name` (without Level Zero).
fn fixture_facts(dir: &Path, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probe/tests/fixtures")
        .join(name);
    let facts = xpu_probe::probe(&xpu_probe::ProbeOptions {
        root,
        level_zero: false,
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(&facts).unwrap()).unwrap();
    path
}

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--port", "0", "--no-gpu-telemetry"];
    args.extend_from_slice(extra);
    let mut server = Server::spawn(serve_command(&args), None);
    server.wait_ready();
    server
}

fn document(server: &Server, headers: &[(&str, &str)]) -> (u16, Value) {
    let response =
        request_with_headers(server.port, "GET", "/v1/dashboard", headers, None).unwrap();
    let value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

/// The document once the facts (read in the background for an explicit device) are in.
fn document_with_facts(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, doc) = document(server, &[]);
        assert_eq!(status, 200, "{doc}");
        if !doc["facts"].is_null() || !doc["facts_error"].is_null() {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "no facts in the document:\n{doc}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_document_describes_machine_engine_model_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let facts = fixture_facts(dir.path(), "arc-a770-igpu");
    let server = start(&[
        "--facts",
        facts.to_str().unwrap(),
        "--model-id",
        "smol <b>test</b>",
    ]);
    let doc = document_with_facts(&server);

    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["status"], "ready");
    assert_eq!(doc["server"]["api_key_required"], false);
    assert_eq!(doc["server"]["version"], env!("CARGO_PKG_VERSION"));

    // The machine: the probe's own document, with the A770 and the iGPU.
    let gpus = doc["facts"]["gpus"].as_array().unwrap();
    assert!(
        gpus.iter()
            .any(|g| g["vendor"] == "intel" && g["family"] == "Alchemist"),
        "{gpus:?}"
    );
    assert_eq!(doc["facts"]["recommendation"]["variant"], "exo-intel");
    assert_eq!(doc["intel_gpu"], true);
    let engines: Vec<&str> = doc["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["device"].as_str().unwrap())
        .collect();
    assert_eq!(engines, ["cpu", "vulkan"]);
    assert_eq!(doc["engines"][0]["in_use"], true);
    assert_eq!(doc["engines"][1]["in_use"], false);
    assert_eq!(doc["engines"][1]["compiled_in"], cfg!(feature = "vulkan"));

    // The engine: an explicit --device cpu, no fallback.
    assert_eq!(doc["engine"]["device"], "cpu");
    assert_eq!(doc["engine"]["requested"], "cpu");
    assert!(
        doc["engine"]["description"]
            .as_str()
            .unwrap()
            .starts_with("cpu"),
        "{doc}"
    );
    assert_eq!(doc["engine"]["fallback_reason"], Value::Null);

    // The model, from its GGUF header: SmolLM2-135M, Q4_1, 30 layers.
    let model = &doc["model"];
    assert_eq!(model["id"], "smol <b>test</b>");
    assert_eq!(model["format"], "gguf");
    assert_eq!(model["architecture"], "llama");
    assert_eq!(model["quantization"], "Q4_1");
    assert_eq!(model["layers"], 30);
    assert_eq!(model["context_length"], 512);
    let parameters = model["parameters"].as_u64().unwrap();
    assert!(
        (130_000_000..140_000_000).contains(&parameters),
        "{parameters}"
    );
    let needed = model["memory_needed_bytes"].as_u64().unwrap();
    assert!(needed > model["weights_bytes"].as_u64().unwrap(), "{model}");
    // A 135M model fits the fixture's system memory and the A770's 16 GiB BAR.
    let suits = model["suits"].as_array().unwrap();
    assert_eq!(suits[0]["device"], "cpu");
    assert_eq!(suits[0]["fits"], true, "{suits:?}");
    assert!(
        suits
            .iter()
            .any(|s| s["device"] == "vulkan" && s["fits"] == true),
        "{suits:?}"
    );

    // Live figures before any request.
    let live = &doc["live"];
    assert_eq!(live["requests_total"], 0);
    assert_eq!(live["tokens_per_second"], 0.0);
    assert_eq!(live["history"].as_array().unwrap().len(), 150);
    assert_eq!(live["history_interval_s"], 2);
    assert_eq!(live["time_to_first_token"]["count"], 0);
    assert_eq!(live["last_generation"], Value::Null);
    // Each slot holds --ctx (512) tokens.
    let slots = live["kv_cache"]["max_sequences"].as_u64().unwrap();
    assert!(slots >= 1, "{live}");
    assert_eq!(live["kv_cache"]["capacity_tokens"], 512 * slots);
    assert_eq!(live["kv_cache"]["sequences"], 0);
    assert_eq!(doc["gpu_telemetry"], Value::Null);

    // One generation and one refused request move the figures.
    let body = r#"{"messages":[{"role":"user","content":"Say hi"}],"max_tokens":8}"#;
    let ok = request(server.port, "POST", "/v1/chat/completions", Some(body)).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let bad = request(server.port, "POST", "/v1/chat/completions", Some("{}")).unwrap();
    assert_eq!(bad.status, 400);
    let (_, doc) = document(&server, &[]);
    let live = &doc["live"];
    assert_eq!(live["requests_total"], 2, "{live}");
    assert_eq!(live["requests_by_status"]["200"], 1);
    assert_eq!(live["requests_by_status"]["400"], 1);
    let generated = live["generated_tokens_total"].as_u64().unwrap();
    assert!((1..=8).contains(&generated), "{live}");
    assert_eq!(live["last_generation"]["completion_tokens"], generated);
    assert_eq!(live["time_to_first_token"]["count"], 1);
    assert!(live["time_to_first_token"]["last_s"].as_f64().unwrap() > 0.0);
    // The tokens were made within the last five seconds.
    assert!(live["tokens_per_second"].as_f64().unwrap() > 0.0, "{live}");
    // The page's own polling is not counted.
    assert_eq!(
        live["requests_total"],
        document(&server, &[]).1["live"]["requests_total"]
    );
}

#[test]
fn no_intel_engine_without_an_intel_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let facts = fixture_facts(dir.path(), "aspeed-only");
    let server = start(&["--facts", facts.to_str().unwrap()]);
    let doc = document_with_facts(&server);
    assert_eq!(doc["intel_gpu"], false);
    assert_eq!(doc["facts"]["recommendation"]["variant"], "exo-cpu");
    let engines = doc["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 1, "{engines:?}");
    assert_eq!(engines[0]["device"], "cpu");
    // The BMC display cannot compute, so it is not a place to run the model.
    let suits = doc["model"]["suits"].as_array().unwrap();
    assert_eq!(suits.len(), 1, "{suits:?}");
}

#[test]
fn the_page_is_public_and_the_document_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "dash-key\n").unwrap();
    let server = start(&["--api-key-file", keys.to_str().unwrap()]);

    for path in ["/", "/dashboard"] {
        let page = request(server.port, "GET", path, None).unwrap();
        assert_eq!(page.status, 200, "{path}");
        let head = page.head.to_ascii_lowercase();
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{head}"
        );
        assert!(page.body.contains("/dashboard/app.js"));
    }
    let script = request(server.port, "GET", "/dashboard/app.js", None).unwrap();
    assert_eq!(script.status, 200);
    assert!(
        script
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/javascript"),
        "{}",
        script.head
    );
    assert_eq!(
        request(server.port, "GET", "/dashboard/app.css", None)
            .unwrap()
            .status,
        200
    );

    let (status, body) = document(&server, &[]);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, _) = document(&server, &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    let (status, doc) = document(&server, &[("Authorization", "Bearer dash-key")]);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["server"]["api_key_required"], true);
    // Only the page's own files are public.
    assert_eq!(
        request(server.port, "GET", "/dashboard/other", None)
            .unwrap()
            .status,
        401
    );
}

#[test]
fn an_unreadable_facts_file_is_reported_not_fatal_for_an_explicit_device() {
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.json");
    std::fs::write(&facts, "{ not json").unwrap();
    let server = start(&["--facts", facts.to_str().unwrap()]);
    let doc = document_with_facts(&server);
    assert_eq!(doc["facts"], Value::Null);
    let why = doc["facts_error"].as_str().unwrap();
    assert!(
        why.contains("facts.json") && why.contains("not valid JSON"),
        "{why}"
    );
    // Without facts only the CPU engine is listed, and the model still serves.
    assert_eq!(doc["engines"].as_array().unwrap().len(), 1);
    assert_eq!(doc["status"], "ready");
    assert!(
        server.log().contains("dashboard: no hardware facts"),
        "{}",
        server.log()
    );
}
