//! Continuous batching in `xpu-runner serve` with the real SmolLM2 model on the CPU:
//! results do not depend on batching, cancelled streams free their slots, slots are
//! reused, a sequence that reaches its slot's end stops with `length`, prompts longer
//! than a slot are refused before queueing, early requests are not starved, SIGTERM
//! drains every stream, the prompt cache reuses a chat's earlier turns, and an engine
//! that cannot batch (candle) says so and serves one request at a time. In builds with the
//! `vulkan` feature, greedy requests on the Vulkan engine (lavapipe), whose tokens are picked
//! on the GPU, give the tokens `generate` picks on the host from the full logits.
//!
//! Every comparison is between two runs of the same binary on this machine (texts
//! depend on the SIMD path, so no text is fixed here).

mod serve_support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_support::{metric, request, Server};

/// A server on a free port with slots of 256 tokens (later options win).
fn start(extra: &[&str]) -> Server {
    let mut cmd = std::process::Command::new(serve_support::binary());
    cmd.arg("serve")
        .arg("--model")
        .arg(serve_support::model_path())
        // One thread each: several test servers share CI's two cores, and spinning
        // thread teams would starve one another.
        .args([
            "--device",
            "cpu",
            "--port",
            "0",
            "--ctx",
            "256",
            "--threads",
            "1",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    server
}

fn health(server: &Server) -> Value {
    let r = request(server.port, "GET", "/health", None).unwrap();
    serde_json::from_str(&r.body).unwrap()
}

/// A greedy completion of `prompt`; the answer's JSON.
fn complete(port: u16, prompt: &str, max_tokens: usize) -> Value {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0
    });
    let r = request(port, "POST", "/v1/completions", Some(&body.to_string())).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["text"]
        .as_str()
        .or_else(|| answer["choices"][0]["message"]["content"].as_str())
        .unwrap()
}

/// Runs each prompt in its own thread at the same time.
fn complete_together(port: u16, prompts: &[&str], max_tokens: usize) -> Vec<Value> {
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let p = p.to_string();
            std::thread::spawn(move || complete(port, &p, max_tokens))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

const PROMPTS: [&str; 4] = [
    "The history of the river Thames begins",
    "1, 2, 3, 4, 5,",
    "A recipe for bread: first,",
    "def fibonacci(n):",
];

/// Opens a streaming completion; see [`serve_support::open_stream`].
fn open_stream(port: u16, prompt: &str, max_tokens: usize) -> (TcpStream, Vec<u8>) {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true
    })
    .to_string();
    serve_support::open_stream(port, "/v1/completions", &body)
}

/// Reads a stream to its end; its text.
fn finish_stream(mut stream: TcpStream, mut seen: Vec<u8>) -> String {
    stream.read_to_end(&mut seen).unwrap();
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn greedy_results_do_not_depend_on_batching_and_slots_are_reused() {
    let server = start(&["--parallel", "4"]);
    let parallel = &health(&server)["parallel"];
    assert_eq!(parallel["requested"], 4, "{parallel}");
    let slots = parallel["slots"].as_u64().unwrap();
    assert_eq!(parallel["batching"], slots > 1);
    assert_eq!(metric(server.port, "xpu_slots_total"), slots as f64);

    let alone: Vec<String> = PROMPTS
        .iter()
        .map(|p| text(&complete(server.port, p, 32)).to_owned())
        .collect();
    let steps_alone = metric(server.port, "xpu_batch_size_count");
    let sequences_alone = metric(server.port, "xpu_batch_size_sum");
    let together = complete_together(server.port, &PROMPTS, 32);
    for ((prompt, alone), together) in PROMPTS.iter().zip(&alone).zip(&together) {
        assert_eq!(alone, text(together), "{prompt:?} changed when batched");
    }
    if slots > 1 {
        // Four sequences in fewer passes than their tokens: they shared passes.
        let steps = metric(server.port, "xpu_batch_size_count") - steps_alone;
        let sequences = metric(server.port, "xpu_batch_size_sum") - sequences_alone;
        assert!(sequences > steps, "no pass held two sequences");
    }

    // Twice as many requests as slots, twice over: every one completes.
    let many: Vec<&str> = PROMPTS.iter().chain(PROMPTS.iter()).copied().collect();
    for answer in complete_together(server.port, &many, 4) {
        assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    assert_eq!(metric(server.port, "xpu_slots_active"), 0.0);
}

#[test]
fn a_cancelled_stream_leaves_the_others_running() {
    let server = start(&["--parallel", "4"]);
    let others: Vec<_> = PROMPTS[..3]
        .iter()
        .map(|p| open_stream(server.port, p, 24))
        .collect();
    // Opened last, so that it runs (and is cut) even where requests run one at a time.
    let (gone, _) = open_stream(server.port, "1, 2, 3, 4, 5,", 400);
    drop(gone);
    for (stream, seen) in others {
        let text = finish_stream(stream, seen);
        assert!(text.contains("data: [DONE]"), "{text}");
        assert!(
            text.contains("\"finish_reason\":\"length\"")
                || text.contains("\"finish_reason\":\"stop\""),
            "{text}"
        );
    }
    // The cut stream ends, is counted, and its slot is free again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (metric(server.port, "xpu_cancellations_total") < 1.0
        || metric(server.port, "xpu_slots_active") > 0.0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(server.port, "xpu_cancellations_total"), 1.0);
    assert_eq!(metric(server.port, "xpu_slots_active"), 0.0);
    let after = complete(server.port, PROMPTS[0], 4);
    assert!(after["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[test]
fn slot_ends_and_overlong_prompts() {
    // 4 slots of 48 tokens from the budget (the --ctx of 256 is more).
    let server = start(&["--parallel", "4", "--kv-cache-tokens", "192"]);
    let health = health(&server);
    assert_eq!(health["context_length"], 48, "{health}");

    // Counting goes on past any slot: each sequence stops at its slot's end.
    let prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";
    for answer in complete_together(server.port, &[prompt; 4], 1000) {
        let usage = &answer["usage"];
        let used =
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        assert!(used <= 48, "{answer}");
        if answer["choices"][0]["finish_reason"] == "length" {
            assert_eq!(used, 48, "{answer}");
        }
    }

    // A prompt that cannot fit a slot is refused before it is queued.
    let generated = metric(server.port, "xpu_prompt_tokens_total");
    let long = "one two three four five six seven eight nine ten ".repeat(8);
    let body = serde_json::json!({"prompt": long, "max_tokens": 4}).to_string();
    let r = request(server.port, "POST", "/v1/completions", Some(&body)).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let error: Value = serde_json::from_str(&r.body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("48 tokens"), "{message}");
    assert!(
        message.contains("--ctx") && message.contains("--kv-cache-tokens"),
        "{message}"
    );
    assert_eq!(metric(server.port, "xpu_prompt_tokens_total"), generated);
}

#[test]
fn early_requests_are_not_starved_by_a_flood() {
    let server = start(&["--parallel", "2", "--max-queue", "32"]);
    let port = server.port;
    let started = Instant::now();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(30));
            std::thread::spawn(move || {
                complete(port, "1, 2, 3, 4, 5,", 6);
                (i, started.elapsed())
            })
        })
        .collect();
    let mut ends: Vec<(usize, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ends.sort_by_key(|&(_, end)| end);
    let order: Vec<usize> = ends.iter().map(|&(i, _)| i).collect();
    // Admission is first come, first served: a request ends before every one sent
    // two waves of slots after it.
    for (position, &i) in order.iter().enumerate() {
        assert!(
            order[position..].iter().all(|&later| later + 4 > i),
            "request {i} ended after later ones: {order:?}"
        );
    }
}

#[test]
fn sigterm_drains_every_stream_in_flight() {
    let mut server = start(&["--parallel", "4", "--shutdown-timeout", "60"]);
    let streams: Vec<_> = PROMPTS
        .iter()
        .map(|p| open_stream(server.port, p, 16))
        .collect();
    server.sigterm();
    for (stream, seen) in streams {
        let text = finish_stream(stream, seen);
        assert!(text.contains("data: [DONE]"), "stream cut:\n{text}");
    }
    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", server.log());
}

/// A chat completion; the answer's JSON.
fn chat(port: u16, messages: &Value, stream: bool) -> Value {
    let mut body = serde_json::json!({
        "messages": messages, "max_tokens": 12, "temperature": 0, "stream": stream,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let r = request(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    if !stream {
        return serde_json::from_str(&r.body).unwrap();
    }
    // Joins the deltas; the usage chunk's usage.
    let mut content = String::new();
    let mut usage = Value::Null;
    for data in r.body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(delta);
        }
        if chunk["usage"].is_object() {
            usage = chunk["usage"].clone();
        }
    }
    serde_json::json!({"choices": [{"message": {"content": content}}], "usage": usage})
}

#[test]
fn a_second_chat_turn_reuses_the_first_from_the_prompt_cache() {
    let warm = start(&["--parallel", "2"]);
    let first = serde_json::json!([{"role": "user", "content": "What is the capital of France?"}]);
    let answer = chat(warm.port, &first, false);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = serde_json::json!([
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": text(&answer)},
        {"role": "user", "content": "And of Italy?"},
    ]);
    let reused = chat(warm.port, &second, true);
    let cached = reused["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 0, "{reused}");
    assert_eq!(
        metric(warm.port, "xpu_prompt_tokens_cached_total"),
        cached as f64
    );
    drop(warm);

    let cold = start(&["--parallel", "2"]);
    let fresh = chat(cold.port, &second, false);
    assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(text(&fresh), text(&reused));
}

#[test]
fn an_engine_that_cannot_batch_says_so_and_serves_one_at_a_time() {
    let server = start(&["--parallel", "4", "--cpu-engine", "candle"]);
    let parallel = &health(&server)["parallel"];
    assert_eq!(
        (
            &parallel["requested"],
            &parallel["slots"],
            &parallel["batching"]
        ),
        (&Value::from(4), &Value::from(1), &Value::from(false)),
        "{parallel}"
    );
    assert!(
        server
            .log()
            .contains("cannot batch; requests run one at a time"),
        "{}",
        server.log()
    );
    for answer in complete_together(server.port, &PROMPTS[..2], 4) {
        assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    // One sequence per pass.
    assert_eq!(
        metric(server.port, "xpu_batch_size_sum"),
        metric(server.port, "xpu_batch_size_count")
    );
}

/// A greedy request reads back only its token, which the Vulkan engine picks on the GPU
/// (`Readback::Greedy`); `generate` reads the full logits of the same passes and picks on
/// the host. Requests one at a time, so that each pass is the one `generate` runs.
#[test]
fn greedy_tokens_picked_on_the_gpu_are_the_host_picks() {
    if !cfg!(feature = "vulkan") {
        eprintln!("this build has no `vulkan` feature: nothing to compare");
        return;
    }
    let mut cmd = std::process::Command::new(serve_support::binary());
    cmd.arg("serve")
        .arg("--model")
        .arg(serve_support::model_path())
        .args([
            "--device",
            "vulkan",
            "--port",
            "0",
            "--ctx",
            "256",
            "--parallel",
            "2",
        ])
        .env("XPU_RUNNER_ALLOW_CPU_ADAPTER", "1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    for prompt in &PROMPTS[..2] {
        let served = text(&complete(server.port, prompt, 16)).to_owned();
        let out = std::process::Command::new(serve_support::binary())
            .arg("generate")
            .arg("--model")
            .arg(serve_support::model_path())
            .args(["--device", "vulkan", "--ctx", "256", "--prompt", prompt])
            .args(["--temperature", "0", "--max-tokens", "16", "--json"])
            .env("XPU_RUNNER_ALLOW_CPU_ADAPTER", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "generate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            served,
            report["text"].as_str().unwrap(),
            "{prompt:?}: the server's GPU-picked text against generate's host-picked one"
        );
    }
}
