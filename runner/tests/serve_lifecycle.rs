//! Lifecycle of `xpu-runner serve` as systemd drives it: SIGTERM drains (the
//! in-flight stream completes with `data: [DONE]`, new requests are refused or get
//! 503, exit code 0 within the timeout), `--shutdown-timeout` bounds the drain, and
//! start-up failures exit non-zero with a message that says what to fix.

mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serve_support::{request, serve_command, Server};

/// Opens a streaming chat request; see [`serve_support::open_stream`].
fn open_stream(port: u16, max_tokens: u32) -> (TcpStream, Vec<u8>) {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"Write a long poem about rivers."}}],"max_tokens":{max_tokens},"temperature":0,"stream":true}}"#
    );
    serve_support::open_stream(port, "/v1/chat/completions", &body)
}

#[test]
fn sigterm_drains_in_flight_stream_and_refuses_new_requests() {
    let mut server = Server::spawn(
        serve_command(&["--port", "0", "--shutdown-timeout", "60"]),
        None,
    );
    server.wait_ready();
    let port = server.port;
    let (mut stream, mut seen) = open_stream(port, 12);
    server.sigterm();
    let signalled = Instant::now();

    // New requests while draining: refused connection or 503.
    std::thread::sleep(Duration::from_millis(200));
    match request(
        port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"hi","max_tokens":2}"#),
    ) {
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(r.body.contains("unavailable_error"), "{}", r.body);
        }
    }

    // The in-flight stream runs to its end.
    stream.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("data: [DONE]"),
        "stream cut during drain:\n{text}"
    );
    assert!(
        text.contains("\"finish_reason\":\"length\"")
            || text.contains("\"finish_reason\":\"stop\""),
        "{text}"
    );

    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(signalled.elapsed() < Duration::from_secs(60));
    assert!(
        server.log().contains("SIGTERM received: draining"),
        "{}",
        server.log()
    );
}

/// Sends `body` to `/v1/completions` and returns the socket once the response has
/// begun (the request is then in the queue or generating), with what was read.
fn open_completion(port: u16, body: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    (stream, Vec::new())
}

#[test]
fn shutdown_timeout_aborts_generations_with_the_abort_reason() {
    // A long context and greedy counting: the generation runs far past the timeout.
    let mut cmd = std::process::Command::new(serve_support::binary());
    cmd.arg("serve")
        .arg("--model")
        .arg(serve_support::model_path())
        .args([
            "--device",
            "cpu",
            "--ctx",
            "4096",
            "--port",
            "0",
            "--shutdown-timeout",
            "1",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    let port = server.port;
    let counting = r#""prompt":"1, 2, 3, 4, 5, 6, 7, 8, 9, 10,","max_tokens":4000,"temperature":0"#;
    let (mut streaming, mut streamed) =
        open_completion(port, &format!("{{{counting},\"stream\":true}}"));
    // Wait for the first tokens, then queue a second, non-streaming request behind it.
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&streamed).matches("data: ").count() < 2 {
        let n = streaming.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed before its first tokens");
        streamed.extend_from_slice(&buf[..n]);
    }
    let (mut waiting, mut answer) = open_completion(port, &format!("{{{counting}}}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while serve_support::metric(port, "xpu_requests_in_flight") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the second request never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.sigterm();

    streaming.read_to_end(&mut streamed).unwrap();
    let streamed = String::from_utf8_lossy(&streamed);
    let abort = streamed
        .find(r#""finish_reason":"abort""#)
        .unwrap_or_else(|| panic!("no abort:\n{streamed}"));
    assert!(
        streamed[abort..].contains("data: [DONE]"),
        "no [DONE] after the abort:\n{streamed}"
    );
    waiting.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""finish_reason":"abort""#), "{answer}");

    let (code, took) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(
        took < Duration::from_secs(9),
        "exit took {took:?} with --shutdown-timeout 1"
    );
    assert!(
        server.log().contains("generation aborted"),
        "{}",
        server.log()
    );
}

#[test]
fn host_names_and_bracketed_ipv6() {
    let mut hosts = vec!["localhost"];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        hosts.extend(["[::1]", "::1"]);
    }
    for host in hosts {
        let mut server = Server::spawn(serve_command(&["--port", "0", "--host", host]), None);
        let log = server.log();
        let bound = log
            .split("listening on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let addr: std::net::SocketAddr = bound.parse().unwrap();
        assert!(addr.ip().is_loopback(), "--host {host} bound {addr}");
        // Any HTTP answer shows the listener works (the model may still be loading).
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        assert!(
            !log.contains("WITHOUT an API key"),
            "loopback warned as public: {log}"
        );
        server.sigterm();
        assert_eq!(
            server.wait_exit(Duration::from_secs(30)).0,
            Some(0),
            "{}",
            server.log()
        );
    }
}

#[test]
fn requests_without_max_tokens_stop_at_the_server_default() {
    let mut server = Server::spawn(
        serve_command(&["--port", "0", "--max-tokens-default", "3"]),
        None,
    );
    server.wait_ready();
    let r = request(
        server.port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"Once upon a time","temperature":0}"#),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""completion_tokens":3"#), "{}", r.body);
    assert!(r.body.contains(r#""finish_reason":"length""#), "{}", r.body);
    // A request's own limit is not capped by the default.
    let r = request(
        server.port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"1, 2, 3, 4, 5,","temperature":0,"max_tokens":6}"#),
    )
    .unwrap();
    assert!(r.body.contains(r#""completion_tokens":6"#), "{}", r.body);
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)).0, Some(0));
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let mut server = Server::spawn(
        serve_command(&["--port", "0", "--shutdown-timeout", "1"]),
        None,
    );
    server.wait_ready();
    let (_stream, _) = open_stream(server.port, 500);
    server.sigterm();
    let (code, took) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", server.log());
    // The timeout, then at most the 5 s the aborted requests get to send their end.
    assert!(
        took < Duration::from_secs(9),
        "drain took {took:?} with --shutdown-timeout 1"
    );
    assert!(
        server
            .log()
            .contains("still running after --shutdown-timeout"),
        "{}",
        server.log()
    );
}

#[test]
fn idle_server_exits_at_once_on_sigint() {
    let mut server = Server::spawn(serve_command(&["--port", "0"]), None);
    server.wait_ready();
    let status = std::process::Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, took) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Runs `serve` expecting a start-up failure; returns its stderr.
fn failing_start(extra: &[&str], model: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(serve_support::binary());
    cmd.arg("serve");
    match model {
        Some(m) => cmd.args(["--model", m]),
        None => cmd.arg("--model").arg(serve_support::model_path()),
    };
    let out = cmd
        .args(["--device", "cpu"])
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_failures_say_what_to_fix() {
    let err = failing_start(&["--port", "0"], Some("/nonexistent/model.gguf"));
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("keys");
    std::fs::write(&empty, "# no keys here\n").unwrap();
    let err = failing_start(
        &["--port", "0", "--api-key-file", empty.to_str().unwrap()],
        None,
    );
    assert!(err.contains("no keys"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let err = failing_start(&["--port", &port], None);
    assert!(
        err.contains("cannot listen") && err.contains("--port"),
        "{err}"
    );

    let err = failing_start(&["--port", "0", "--max-queue", "0"], None);
    assert!(err.contains("--max-queue"), "{err}");

    // `.invalid` never resolves (RFC 2606); the error says what to write instead.
    let err = failing_start(&["--port", "0", "--host", "no-such-host.invalid"], None);
    assert!(
        err.contains("does not resolve") && err.contains("localhost") && err.contains("127.0.0.1"),
        "{err}"
    );
    let err = failing_start(&["--host", "127.0.0.1:8080"], None);
    assert!(err.contains("--port"), "{err}");

    let facts = dir.path().join("facts.json");
    std::fs::write(&facts, "{\"schema_version\": 99}").unwrap();
    let mut cmd = std::process::Command::new(serve_support::binary());
    let out = cmd
        .arg("serve")
        .arg("--model")
        .arg(serve_support::model_path())
        .args([
            "--device",
            "auto",
            "--port",
            "0",
            "--facts",
            facts.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema_version 99"), "{err}");
}

#[test]
fn env_fallbacks_and_auto_device_from_facts() {
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.json");
    std::fs::write(
        &facts,
        r#"{"schema_version":1,"recommendation":{"variant":"exo-cpu","reasons":["no GPU found"],"warnings":[]},"warnings":[]}"#,
    )
    .unwrap();
    // Only the subcommand on the command line: every option comes from the environment.
    let mut cmd = std::process::Command::new(serve_support::binary());
    cmd.arg("serve")
        .env("XPU_RUNNER_MODEL", serve_support::model_path())
        .env("XPU_RUNNER_PORT", "0")
        .env("XPU_RUNNER_DEVICE", "auto")
        .env("XPU_RUNNER_FACTS", &facts)
        .env("XPU_RUNNER_MODEL_ID", "smol-test")
        .env("XPU_RUNNER_CTX", "256")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    let health = request(server.port, "GET", "/health", None).unwrap();
    assert!(
        health.body.contains("\"model\":\"smol-test\""),
        "{}",
        health.body
    );
    assert!(
        health.body.contains("\"context_length\":256"),
        "{}",
        health.body
    );
    let log = server.log();
    assert!(
        log.contains("device cpu chosen") && log.contains("no GPU found"),
        "{log}"
    );
    // ANSI colours never reach a log that is not a terminal.
    assert!(!log.contains('\u{1b}'), "ANSI escape in piped log:\n{log}");
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)).0, Some(0));
}
