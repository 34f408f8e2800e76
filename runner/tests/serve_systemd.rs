//! systemd integration of `xpu-runner serve` against real systemd mechanisms: the
//! notify protocol over a `NOTIFY_SOCKET` datagram socket owned by the test
//! (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and socket activation through
//! Debian's `systemd-socket-activate`.

mod serve_support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serve_support::{model_path, request, serve_command, Server};

/// Collects every datagram sent to a fresh NOTIFY_SOCKET.
struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket {
            path,
            messages,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let all = self.all();
            if all.iter().any(|m| m.lines().any(|l| l == what)) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {what} within {limit:?}; got {:?}", self.all());
    }
}

#[test]
fn notify_ready_status_watchdog_and_stopping() {
    let notify = NotifySocket::new();
    let mut cmd = serve_command(&["--port", "0"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let mut server = Server::spawn(cmd, None);

    let messages = notify.wait_for("READY=1", Duration::from_secs(120));
    // A loading status comes before readiness, and READY=1 carries the serving status.
    let ready_index = messages.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        messages[..ready_index]
            .iter()
            .any(|m| m.starts_with("STATUS=loading")),
        "{messages:?}"
    );
    let ready = &messages[ready_index];
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert!(ready.contains(&format!(":{}", server.port)), "{ready}");
    // /health agrees with READY=1.
    assert_eq!(
        request(server.port, "GET", "/health", None).unwrap().status,
        200
    );

    // WATCHDOG_USEC=400000 means a ping at least every 200 ms.
    let start = Instant::now();
    let count = || {
        notify
            .all()
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    let before = count();
    while count() < before + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "too few watchdog pings: {:?}",
            notify.all()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    server.sigterm();
    let messages = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STOPPING=1") && m.contains("STATUS=draining")),
        "{messages:?}"
    );
    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", server.log());
}

#[test]
fn no_watchdog_pings_when_not_asked() {
    let notify = NotifySocket::new();
    let mut cmd = serve_command(&["--port", "0"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env_remove("WATCHDOG_USEC");
    let mut server = Server::spawn(cmd, None);
    notify.wait_for("READY=1", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !notify.all().iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        notify.all()
    );
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)).0, Some(0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn socket_activation_with_systemd_socket_activate() {
    let tool = "systemd-socket-activate";
    assert!(
        Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .is_ok(),
        "{tool} is missing; install Debian's systemd package (scripts/apt-packages.txt)"
    );
    let port = free_port();
    let mut cmd = Command::new(tool);
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "-E", "RUST_LOG=info"])
        .arg(serve_support::binary())
        .arg("serve")
        .arg("--model")
        .arg(model_path())
        // The port given here is deliberately different: systemd's socket wins.
        .args(["--device", "cpu", "--ctx", "512", "--port", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Server::spawn(cmd, Some(port));
    // systemd-socket-activate is listening now; the first connection starts the server.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match request(port, "GET", "/health", None) {
            Ok(r) if r.status == 200 => break,
            Ok(r) => assert_eq!(r.status, 503, "{}", r.body),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.log().contains("socket activation"),
        "{}",
        server.log()
    );
    let r = request(
        port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"Hello","max_tokens":2,"temperature":0}"#),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    server.sigterm();
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)).0,
        Some(0),
        "{}",
        server.log()
    );
}
