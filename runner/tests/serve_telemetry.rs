//! Intel GPU telemetry in `xpu-runner serve`: the real binary with the real test model
//! and the real Level Zero loader (Debian's `libze1`), pointed at the fake driver from
//! `probe/fake-ze-driver` with `ZE_ENABLE_ALT_DRIVERS`. The fake reports fixed memory
//! and temperatures and energy counters that grow at exactly 100 W (its Arc A770) and
//! 400 W (its Data Center GPU Max 1550).
//!
//! Checks: the values reach `/metrics` and `/health`; the telemetry child is gone after
//! SIGTERM; without a usable driver or loader, or with `--no-gpu-telemetry`, there are
//! no GPU lines and nothing fails.

mod serve_support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serve_support::{binary, request, serve_command, Server};

const GIB: u64 = 1 << 30;

/// Builds (once per test binary) and returns the fake driver, like the probe's Level
/// Zero tests: `cargo build -p fake-ze-driver` into `<target>/fake-ze-driver`, a
/// directory of its own so that this nested build never touches the artifacts of the
/// `cargo test` run that started it. `FAKE_ZE_DRIVER=/abs/path.so` uses a prebuilt one.
fn fake_driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        if let Some(path) = std::env::var_os("FAKE_ZE_DRIVER").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "FAKE_ZE_DRIVER={} does not exist",
                path.display()
            );
            return path;
        }
        // The runner binary is <target-dir>/<profile>/xpu-runner.
        let target_dir = Path::new(binary())
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("cannot find the target directory above {}", binary()))
            .join("fake-ze-driver");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from(env!("CARGO")));
        let output = Command::new(&cargo)
            .args(["build", "--quiet", "-p", "fake-ze-driver", "--target-dir"])
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("could not run {cargo:?} to build the fake driver: {e}"));
        assert!(
            output.status.success(),
            "cargo build -p fake-ze-driver failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let path = target_dir.join("debug/libfake_ze_driver.so");
        assert!(path.is_file(), "{} was not built", path.display());
        path
    })
}

/// `xpu-runner serve` on a free port with fast telemetry and the given environment.
/// Level Zero variables of the outer environment are removed, so that the test sees
/// only what it sets.
fn start(extra: &[&str], env: &[(&str, &OsString)]) -> Server {
    let mut args = vec!["--port", "0", "--gpu-telemetry-interval", "0.2"];
    args.extend_from_slice(extra);
    let mut cmd = serve_command(&args);
    for name in [
        "ZE_ENABLE_ALT_DRIVERS",
        "XPU_LEVEL_ZERO_LOADER",
        "ZE_FLAT_DEVICE_HIERARCHY",
        "XPU_RUNNER_NO_GPU_TELEMETRY",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut server = Server::spawn(cmd, None);
    server.wait_ready();
    server
}

/// Waits for `what` in the server's log, for at most 30 s.
fn wait_for_log(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(server: &Server) -> String {
    let r = request(server.port, "GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn health(server: &Server) -> serde_json::Value {
    let r = request(server.port, "GET", "/health", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/health is not JSON ({e}): {}", r.body))
}

/// The value of the sample `series` (name and labels, exactly) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The Level Zero telemetry children of process `parent` (by their environment).
fn telemetry_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ
            .split(|&b| b == 0)
            .any(|var| var == b"XPU_LEVEL_ZERO_CHILD=telemetry-stream")
        {
            found.push(pid);
        }
    }
    found
}

/// A process that exists and is not a zombie.
fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn fake_intel_gpus_show_in_metrics_and_health_and_the_child_ends_with_the_server() {
    let driver = fake_driver().as_os_str().to_owned();
    let two = OsString::from("2");
    let mut server = start(
        &[],
        &[
            ("ZE_ENABLE_ALT_DRIVERS", &driver),
            ("FAKE_ZE_DEVICES", &two),
        ],
    );
    wait_for_log(&server, "GPU telemetry (Level Zero Sysman): 2 device(s)");

    // Power needs two energy samples: wait for the reading that has it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = metrics(&server);
    while !text.contains("xpu_gpu_power_watts{") {
        assert!(
            Instant::now() < deadline,
            "no power reading in /metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
        text = metrics(&server);
    }
    let a770 = r#"{index="0",device="Fake Intel(R) Arc(TM) A770 Graphics",pci="0000:03:00.0"}"#;
    let max = r#"{index="1",device="Fake Intel(R) Data Center GPU Max 1550",pci="0000:29:00.0"}"#;
    let value = |name: &str, labels: &str| {
        sample(&text, &format!("{name}{labels}"))
            .unwrap_or_else(|| panic!("no {name}{labels} in\n{text}"))
    };
    assert_eq!(value("xpu_gpu_memory_used_bytes", a770), (4 * GIB) as f64);
    assert_eq!(value("xpu_gpu_memory_total_bytes", a770), (16 * GIB) as f64);
    assert_eq!(value("xpu_gpu_temperature_celsius", a770), 45.5);
    assert_eq!(value("xpu_gpu_memory_used_bytes", max), (28 * GIB) as f64);
    assert_eq!(value("xpu_gpu_memory_total_bytes", max), (128 * GIB) as f64);
    assert_eq!(value("xpu_gpu_temperature_celsius", max), 60.0);
    let (a770_watts, max_watts) = (
        value("xpu_gpu_power_watts", a770),
        value("xpu_gpu_power_watts", max),
    );
    assert!((a770_watts - 100.0).abs() < 1.0, "{a770_watts}");
    assert!((max_watts - 400.0).abs() < 1.0, "{max_watts}");
    for family in [
        "memory_used_bytes",
        "memory_total_bytes",
        "temperature_celsius",
        "power_watts",
    ] {
        assert!(
            text.contains(&format!("# TYPE xpu_gpu_{family} gauge\n")),
            "{family}:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP xpu_gpu_{family} ")),
            "{family}:\n{text}"
        );
    }
    // The server's own metrics are still there, and the exposition ends once.
    assert!(text.contains("xpu_device_info{"), "{text}");
    assert!(
        text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1,
        "{text}"
    );

    let body = health(&server);
    assert_eq!(body["status"], "ok", "{body}");
    let gpu = &body["gpu"];
    assert_eq!(gpu["memory_total_bytes"], 144 * GIB, "{body}");
    assert_eq!(gpu["memory_used_bytes"], 32 * GIB, "{body}");
    assert_eq!(gpu["temperature_c"], 60.0, "{body}");
    assert_eq!(
        gpu["devices"][0]["name"], "Fake Intel(R) Arc(TM) A770 Graphics",
        "{body}"
    );
    assert_eq!(gpu["devices"][1]["pci_address"], "0000:29:00.0", "{body}");
    assert_eq!(gpu["devices"][1]["memory_total_bytes"], 128 * GIB, "{body}");
    let total_watts = gpu["power_w"]
        .as_f64()
        .unwrap_or_else(|| panic!("no power in {body}"));
    assert!((total_watts - 500.0).abs() < 2.0, "{body}");

    // One telemetry child runs; SIGTERM ends the server and the child with it.
    let children = telemetry_children(server.child.id());
    assert_eq!(children.len(), 1, "telemetry children: {children:?}");
    server.sigterm();
    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(
        server.log().contains("GPU telemetry stopped"),
        "{}",
        server.log()
    );
    assert!(
        !process_exists(children[0]),
        "telemetry child {} outlived the server",
        children[0]
    );
}

#[test]
fn without_a_usable_driver_or_loader_there_are_no_gpu_values_and_no_errors() {
    // The real loader with no driver it can load, then no loader at all.
    let no_driver = OsString::from("/nonexistent/libze_intel_gpu.so.1");
    let no_loader = OsString::from("/nonexistent/libze_loader.so.1");
    for env in [
        ("ZE_ENABLE_ALT_DRIVERS", &no_driver),
        ("XPU_LEVEL_ZERO_LOADER", &no_loader),
    ] {
        let server = start(&[], &[env]);
        wait_for_log(&server, "GPU telemetry: no reading");
        let text = metrics(&server);
        assert!(!text.contains("xpu_gpu_"), "{env:?}:\n{text}");
        assert!(text.ends_with("# EOF\n"), "{env:?}:\n{text}");
        let body = health(&server);
        assert_eq!(body["status"], "ok", "{env:?}: {body}");
        assert!(body.get("gpu").is_none(), "{env:?}: {body}");
        // The server still generates.
        let r = request(
            server.port,
            "POST",
            "/v1/completions",
            Some(r#"{"prompt":"The capital of France is","max_tokens":2,"temperature":0}"#),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{env:?}: {}", r.body);
        let log = server.log();
        assert!(
            !log.contains("ERROR") && !log.contains("WARN"),
            "{env:?}:\n{log}"
        );
    }
}

#[test]
fn no_gpu_telemetry_starts_no_child_even_with_a_gpu() {
    let driver = fake_driver().as_os_str().to_owned();
    let yes = OsString::from("yes");
    // Once by option, once by environment variable.
    let by_option = start(
        &["--no-gpu-telemetry"],
        &[("ZE_ENABLE_ALT_DRIVERS", &driver)],
    );
    let by_env = start(
        &[],
        &[
            ("ZE_ENABLE_ALT_DRIVERS", &driver),
            ("XPU_RUNNER_NO_GPU_TELEMETRY", &yes),
        ],
    );
    // With telemetry on, the fake's first reading comes within a second at this interval
    // (the test above waits for it); give it twice that.
    std::thread::sleep(Duration::from_secs(2));
    for server in [&by_option, &by_env] {
        assert_eq!(telemetry_children(server.child.id()), Vec::<u32>::new());
        let text = metrics(server);
        assert!(!text.contains("xpu_gpu_"), "{text}");
        assert!(health(server).get("gpu").is_none());
        assert!(!server.log().contains("GPU telemetry"), "{}", server.log());
    }
}
