//! Level Zero through the real loader (Debian `libze1`, 1.8.12) and the fake driver
//! from `probe/fake-ze-driver`, selected with `ZE_ENABLE_ALT_DRIVERS`.
//!
//! The child process is the real `xpu-probe` binary: these tests exercise the same
//! re-exec path as production. The fake driver is built by [`fake_driver`] with
//! `cargo build -p fake-ze-driver` into `<target>/fake-ze-driver` (a cdylib cannot be a
//! Rust dependency, and `cargo test --workspace` does not promise to build it before
//! this test runs). Set `FAKE_ZE_DRIVER=/abs/path.so` to use a prebuilt one instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xpu_probe::level_zero::{
    codes, query_with, telemetry_with, LevelZeroFacts, QueryOptions, Telemetry, TelemetryMonitor,
};

const GIB: u64 = 1 << 30;
const PROBE: &str = env!("CARGO_BIN_EXE_xpu-probe");

/// Builds (once per test binary) and returns the fake driver library.
///
/// It is built in a target directory of its own (`<target>/fake-ze-driver`), so that
/// this nested build never touches the artifacts of the `cargo test` run that started
/// it (a rebuilt `level-zero-sys` there breaks the doctests that run afterwards).
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
        // PROBE is <target-dir>/<profile>/xpu-probe.
        let target_dir = Path::new(PROBE)
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("cannot find the target directory above {PROBE}"))
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

/// Options that run the real `xpu-probe` as the child with the fake driver and `env`.
fn options(env: &[(&str, &str)]) -> QueryOptions {
    let mut all: Vec<(OsString, OsString)> = vec![(
        "ZE_ENABLE_ALT_DRIVERS".into(),
        fake_driver().as_os_str().to_owned(),
    )];
    all.extend(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    QueryOptions {
        exe: Some(PROBE.into()),
        timeout: Duration::from_secs(20),
        env: all,
    }
}

fn query(env: &[(&str, &str)]) -> LevelZeroFacts {
    query_with(&options(env))
}

#[test]
fn one_device_is_fully_described() {
    let facts = query(&[("FAKE_ZE_DEVICES", "1")]);
    assert_eq!(facts.error, None);
    assert!(facts.loader_found);
    assert!(!facts.skipped);
    // Debian's libze1 1.8.12 installs libze_loader.so.1.8.0 and reports 1.8.0.
    let version = facts.loader_version.as_deref().expect("a loader version");
    assert!(version.starts_with("1."), "{version}");
    assert_eq!(facts.drivers.len(), 1);
    let driver = &facts.drivers[0];
    assert_eq!(driver.version, "1.3.26918");
    assert_eq!(driver.api_version, "1.3");
    assert_eq!(driver.devices.len(), 1);
    let d = &driver.devices[0];
    assert_eq!(d.name, "Fake Intel(R) Arc(TM) A770 Graphics");
    assert_eq!(d.r#type, "gpu");
    assert_eq!(
        (d.vendor_id.as_str(), d.device_id.as_str()),
        ("8086", "56a0")
    );
    assert_eq!(d.uuid, "8680a056000000000300000000000000");
    assert_eq!(d.pci_address.as_deref(), Some("0000:03:00.0"));
    assert!(!d.integrated && !d.sub_device);
    assert_eq!(d.eu_count, 512);
    assert_eq!(
        (d.threads_per_eu, d.eu_simd_width, d.core_clock_mhz),
        (8, 8, 2400)
    );
    assert_eq!(d.memory_bytes, 16 * GIB);
    assert_eq!(d.max_alloc_bytes, 4 * GIB - 8 * 1024);
    assert_eq!(
        (d.max_group_size, d.shared_local_memory_bytes),
        (1024, 65536)
    );
    assert_eq!(d.sub_group_sizes, vec![8, 16, 32]);
    assert_eq!(d.sub_devices, 0);
}

#[test]
fn two_devices_with_tiles_and_an_integrated_one() {
    let facts = query(&[("FAKE_ZE_DEVICES", "2")]);
    assert_eq!(facts.error, None);
    let devices = &facts.drivers[0].devices;
    assert_eq!(devices.len(), 2);
    let max = &devices[1];
    assert_eq!(max.device_id, "0bd5");
    assert_eq!(max.sub_devices, 2);
    assert_eq!(
        max.memory_bytes,
        128 * GIB,
        "the sum of both memory modules"
    );
    assert_eq!(max.eu_count, 2 * 64 * 8);

    // The probe asks for card-level devices; a user's FLAT setting is respected.
    let flat = query(&[
        ("FAKE_ZE_DEVICES", "2"),
        ("ZE_FLAT_DEVICE_HIERARCHY", "FLAT"),
    ]);
    let names: Vec<(&str, bool)> = flat.drivers[0]
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.sub_device))
        .collect();
    assert_eq!(names, [("56a0", false), ("0bd5", true), ("0bd5", true)]);

    let facts = query(&[("FAKE_ZE_DEVICES", "3")]);
    let igpu = &facts.drivers[0].devices[2];
    assert!(igpu.integrated);
    assert_eq!(igpu.device_id, "4680");
}

#[test]
fn a_driver_without_devices_is_reported_empty_not_failed() {
    let facts = query(&[("FAKE_ZE_DEVICES", "0")]);
    assert_eq!(facts.error, None);
    assert_eq!(facts.drivers.len(), 1);
    assert!(facts.drivers[0].devices.is_empty());
}

#[test]
fn a_failing_zeinit_reports_code_name_and_meaning_without_crashing() {
    // After this failure loader 1.8.12 has unloaded the driver; any further call would
    // segfault, so a clean error here also proves that none was made.
    let facts = query(&[("FAKE_ZE_INIT_RESULT", "0x78000001")]);
    assert!(facts.loader_found);
    assert!(facts.drivers.is_empty());
    let error = facts.error.expect("an error");
    assert_eq!(error.code, 0x7800_0001);
    assert_eq!(error.name, "ZE_RESULT_ERROR_UNINITIALIZED");
    assert!(
        error
            .meaning
            .starts_with("zeInit failed: driver is not initialized"),
        "{}",
        error.meaning
    );
    assert!(
        error.meaning.contains("compute-runtime"),
        "{}",
        error.meaning
    );
}

#[test]
fn an_undefined_result_code_is_named_by_its_value() {
    let error = query(&[("FAKE_ZE_INIT_RESULT", "0x7abc0001")])
        .error
        .expect("an error");
    assert_eq!(error.code, 0x7abc_0001);
    assert_eq!(error.name, "ZE_RESULT_0x7abc0001");
    assert!(
        error
            .meaning
            .contains("not defined by the Level Zero 1.4 headers"),
        "{}",
        error.meaning
    );
}

#[test]
fn a_missing_loader_is_a_normal_outcome() {
    let facts = query(&[("XPU_LEVEL_ZERO_LOADER", "/nonexistent/libze_loader.so.1")]);
    assert_eq!(
        facts,
        LevelZeroFacts {
            loader_found: false,
            ..Default::default()
        },
        "no loader: no error, no drivers"
    );
}

#[test]
fn a_library_that_is_not_a_loader_is_an_error() {
    let error = query(&[("XPU_LEVEL_ZERO_LOADER", "libc.so.6")])
        .error
        .expect("an error");
    assert_eq!(error.code, codes::LOADER_INVALID);
    assert!(
        error.meaning.contains("symbol zeInit is missing"),
        "{}",
        error.meaning
    );
}

#[test]
fn a_driver_crash_is_contained_and_attributed() {
    let facts = query(&[("FAKE_ZE_CRASH_IN", "zeDeviceGetProperties")]);
    let error = facts.error.clone().expect("an error");
    assert_eq!(error.code, codes::CHILD_CRASHED);
    assert_eq!(error.name, "XPU_LEVEL_ZERO_CHILD_CRASHED");
    assert!(
        error
            .meaning
            .contains("signal 11 (SIGSEGV) during zeDeviceGetProperties"),
        "{}",
        error.meaning
    );
    // What was learnt before the crash is kept.
    assert!(facts.loader_found);
    assert_eq!(facts.drivers.len(), 1);
    assert_eq!(facts.drivers[0].version, "1.3.26918");
    assert!(facts.drivers[0].devices.is_empty());

    let error = query(&[("FAKE_ZE_CRASH_IN", "zeInit")])
        .error
        .expect("an error");
    assert!(error.meaning.contains("during zeInit"), "{}", error.meaning);
}

#[test]
fn a_hanging_driver_is_killed_after_the_timeout() {
    let mut options = options(&[("FAKE_ZE_HANG_IN", "zeDeviceGet")]);
    options.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let facts = query_with(&options);
    let took = started.elapsed();
    let error = facts.error.expect("an error");
    assert_eq!(error.code, codes::CHILD_TIMEOUT);
    assert!(
        error.meaning.contains("within 1.0 s during zeDeviceGet"),
        "{}",
        error.meaning
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(facts.drivers.len(), 1, "facts before the hang are kept");
}

#[test]
fn driver_output_on_stdout_does_not_confuse_the_parent() {
    let facts = query(&[(
        "FAKE_ZE_STDOUT",
        "xpu-level-zero:done {\"bogus\": true}\nnoise",
    )]);
    // The driver prints during zeInit, before the child's real answer, which wins.
    assert_eq!(facts.error, None);
    assert_eq!(facts.drivers[0].devices.len(), 1);
}

#[test]
fn a_child_that_ignores_the_protocol_or_cannot_start() {
    let mut options = options(&[]);
    options.exe = Some("/bin/true".into());
    let error = query_with(&options).error.expect("an error");
    assert_eq!(error.code, codes::CHILD_NO_ANSWER);
    assert!(
        error.meaning.contains("run_child_if_requested"),
        "{}",
        error.meaning
    );

    options.exe = Some("/nonexistent/xpu-probe".into());
    let error = query_with(&options).error.expect("an error");
    assert_eq!(error.code, codes::CHILD_SPAWN_FAILED);
    assert!(
        error.meaning.contains("/nonexistent/xpu-probe"),
        "{}",
        error.meaning
    );
}

#[test]
fn telemetry_sums_devices_and_measures_power() {
    let t = telemetry_with(&options(&[("FAKE_ZE_DEVICES", "2")])).expect("telemetry");
    assert_eq!(t.memory_total_bytes, Some(16 * GIB + 128 * GIB));
    assert_eq!(t.memory_used_bytes, Some(4 * GIB + 28 * GIB));
    assert_eq!(t.temperature_c, Some(60.0));
    // The fake's counters grow at exactly 100 W and 400 W.
    let watts = t.power_w.expect("a power reading");
    assert!((watts - 500.0).abs() < 1.0, "{watts}");

    let per_device: Vec<_> = t
        .devices
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.pci_address.as_deref(),
                d.memory_used_bytes,
                d.temperature_c,
            )
        })
        .collect();
    assert_eq!(
        per_device,
        [
            (
                "Fake Intel(R) Arc(TM) A770 Graphics",
                Some("0000:03:00.0"),
                Some(4 * GIB),
                Some(45.5)
            ),
            (
                "Fake Intel(R) Data Center GPU Max 1550",
                Some("0000:29:00.0"),
                Some(28 * GIB),
                Some(60.0)
            ),
        ]
    );
    let max_watts = t.devices[1].power_w.expect("a power reading");
    assert!((max_watts - 400.0).abs() < 1.0, "{max_watts}");
}

#[test]
fn telemetry_is_absent_without_a_loader_a_driver_or_a_device() {
    assert_eq!(
        telemetry_with(&options(&[(
            "XPU_LEVEL_ZERO_LOADER",
            "/nonexistent/libze.so.1"
        )])),
        None
    );
    assert_eq!(
        telemetry_with(&options(&[("FAKE_ZE_INIT_RESULT", "0x78000001")])),
        None
    );
    assert_eq!(telemetry_with(&options(&[("FAKE_ZE_DEVICES", "0")])), None);
    assert_eq!(
        telemetry_with(&options(&[("FAKE_ZE_CRASH_IN", "zesMemoryGetState")])),
        None
    );
}

/// The whole binary: `xpu-probe --root <fixture>` with the fake driver in its
/// environment embeds the child's facts and warns when Level Zero fails.
#[test]
fn the_probe_binary_reports_level_zero_and_warns_on_failure() {
    // An Arc A770 at 0000:03:00.0 and a UHD 770 at 0000:00:02.0, as the fake's first
    // and third devices.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arc-a770-igpu");
    let run = |env: &[(&str, &str)]| -> serde_json::Value {
        let output = Command::new(PROBE)
            .arg("--root")
            .arg(&fixture)
            .env("ZE_ENABLE_ALT_DRIVERS", fake_driver())
            .envs(env.iter().copied())
            .output()
            .expect("xpu-probe runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("facts JSON")
    };
    let all_warnings = |facts: &serde_json::Value| -> String {
        let mut text = facts["warnings"].to_string();
        text.push_str(&facts["recommendation"]["warnings"].to_string());
        text
    };

    let good = run(&[("FAKE_ZE_DEVICES", "3")]);
    let devices = &good["level_zero"]["drivers"][0]["devices"];
    assert_eq!(devices[0]["device_id"], "56a0");
    assert_eq!(devices[0]["pci_address"], "0000:03:00.0");
    assert_eq!(devices[2]["pci_address"], "0000:00:02.0");
    assert_eq!(good["level_zero"]["error"], serde_json::Value::Null);
    assert!(
        !all_warnings(&good).contains("Level Zero"),
        "{}",
        all_warnings(&good)
    );
    let reasons = good["recommendation"]["reasons"].to_string();
    assert!(
        reasons.contains("Fake Intel(R) Arc(TM) A770 Graphics"),
        "{reasons}"
    );

    // A driver without devices: the probe warns that the A770 is not usable.
    let empty = run(&[("FAKE_ZE_DEVICES", "0")]);
    assert!(
        all_warnings(&empty).contains("Level Zero"),
        "{}",
        all_warnings(&empty)
    );

    let failed = run(&[("FAKE_ZE_INIT_RESULT", "0x78000001")]);
    assert_eq!(
        failed["level_zero"]["error"]["name"],
        "ZE_RESULT_ERROR_UNINITIALIZED"
    );
    assert!(
        all_warnings(&failed).contains("ZE_RESULT_ERROR_UNINITIALIZED"),
        "{}",
        all_warnings(&failed)
    );

    let skipped = Command::new(PROBE)
        .arg("--no-level-zero")
        .arg("--root")
        .arg(&fixture)
        .env("ZE_ENABLE_ALT_DRIVERS", fake_driver())
        .env("FAKE_ZE_CRASH_IN", "zeInit")
        .output()
        .expect("xpu-probe runs");
    let skipped: serde_json::Value = serde_json::from_slice(&skipped.stdout).expect("facts JSON");
    assert_eq!(skipped["level_zero"]["skipped"], true);
    assert_eq!(skipped["level_zero"]["error"], serde_json::Value::Null);
}

/// A process that is itself a query child must not start another (a test harness, or a
/// binary that forgot `run_child_if_requested`, would otherwise re-run itself without
/// end). This test re-runs itself as such a child to check the guard.
#[test]
fn a_query_child_does_not_start_children_of_its_own() {
    const NAME: &str = "a_query_child_does_not_start_children_of_its_own";
    if std::env::var_os("XPU_LEVEL_ZERO_CHILD").is_some() {
        // Inside the re-run: the guard must answer at once, without starting anything.
        let error = query_with(&QueryOptions::default())
            .error
            .expect("an error");
        assert_eq!(error.code, codes::CHILD_SPAWN_FAILED);
        assert!(
            error.meaning.contains("itself a Level Zero query child"),
            "{}",
            error.meaning
        );
        return;
    }
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("XPU_LEVEL_ZERO_CHILD", "facts")
        .output()
        .expect("the test binary re-runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Polls `monitor` until `accept` takes a reading, for at most 20 s.
fn wait_for(monitor: &TelemetryMonitor, accept: impl Fn(&Telemetry) -> bool) -> Option<Telemetry> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(t) = monitor.latest().filter(|t| accept(t)) {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn the_monitor_streams_readings_and_kills_its_child_when_dropped() {
    let monitor = TelemetryMonitor::start(
        &options(&[("FAKE_ZE_DEVICES", "2")]),
        Duration::from_millis(100),
    );
    let t = wait_for(&monitor, |t| t.power_w.is_some()).expect("a reading with power");
    assert_eq!(t.memory_total_bytes, Some(144 * GIB));
    assert_eq!(t.temperature_c, Some(60.0));
    let watts = t.power_w.unwrap();
    assert!((watts - 500.0).abs() < 1.0, "{watts}");
    let pid = monitor.child_id().expect("a running child");
    assert!(process_exists(pid));
    let started = Instant::now();
    drop(monitor);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        started.elapsed()
    );
    assert!(!process_exists(pid), "child {pid} outlived the monitor");
}

#[test]
fn the_monitor_has_nothing_without_devices_or_with_a_crashing_driver() {
    for env in [
        [("FAKE_ZE_DEVICES", "0")],
        [("FAKE_ZE_INIT_RESULT", "0x78000001")],
        [("XPU_LEVEL_ZERO_LOADER", "/nonexistent/libze_loader.so.1")],
        [("FAKE_ZE_CRASH_IN", "zesMemoryGetState")],
    ] {
        let monitor = TelemetryMonitor::start(&options(&env), Duration::from_millis(100));
        // Wait for the child to start, fail and be reaped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while (monitor.children_started() == 0 || monitor.child_id().is_some())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            monitor.children_started(),
            1,
            "{env:?}: one child, no restart yet"
        );
        assert_eq!(
            monitor.child_id(),
            None,
            "{env:?}: the child should have ended"
        );
        assert_eq!(monitor.latest(), None, "{env:?}");
        let started = Instant::now();
        drop(monitor);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{env:?}: drop waited for the restart delay"
        );
    }
}

#[test]
fn a_hung_monitor_child_is_killed_and_its_reading_goes_stale() {
    // The driver hangs in its first Sysman call: no reading ever comes, and the child
    // is killed once it has been quiet for longer than the limit.
    let mut options = options(&[("FAKE_ZE_HANG_IN", "zesDeviceEnumMemoryModules")]);
    options.timeout = Duration::from_millis(500);
    let monitor = TelemetryMonitor::start(&options, Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pid = None;
    while pid.is_none() && Instant::now() < deadline {
        pid = monitor.child_id();
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = pid.expect("a child started");
    // Quiet limit: 3 intervals + 1 s + the 0.5 s timeout = 1.8 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_exists(pid), "the hung child was not killed");
    assert_eq!(monitor.latest(), None);
}

/// Options with two drivers: the fake, and a copy tagged `second` that reads
/// `FAKE_ZE_SECOND_*` first. The returned directory holds the copy; keep it alive.
fn two_drivers(env: &[(&str, &str)]) -> (tempfile::TempDir, QueryOptions) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let second = dir.path().join("libfake_ze_driver.second.so");
    std::fs::copy(fake_driver(), &second).expect("copy the fake driver");
    let mut options = options(env);
    let mut drivers = fake_driver().as_os_str().to_owned();
    drivers.push(",");
    drivers.push(&second);
    options.env[0].1 = drivers;
    (dir, options)
}

#[test]
fn two_drivers_are_listed_and_their_telemetry_is_summed() {
    // With two drivers loader 1.8.12 wraps every handle (its "intercept" mode), which
    // the single-driver tests never exercise.
    let (_dir, options) = two_drivers(&[("FAKE_ZE_SECOND_DEVICES", "2")]);
    let facts = query_with(&options);
    assert_eq!(facts.error, None);
    let devices: Vec<Vec<&str>> = facts
        .drivers
        .iter()
        .map(|d| d.devices.iter().map(|d| d.device_id.as_str()).collect())
        .collect();
    assert_eq!(devices, [vec!["56a0"], vec!["56a0", "0bd5"]]);
    assert_eq!(facts.drivers[1].devices[1].sub_devices, 2);

    let t = telemetry_with(&options).expect("telemetry");
    assert_eq!(t.memory_total_bytes, Some((16 + 16 + 128) * GIB));
    let watts = t.power_w.expect("a power reading");
    assert!((watts - 600.0).abs() < 1.0, "{watts}");
}

#[test]
fn a_second_driver_that_fails_init_is_dropped_and_the_first_still_reported() {
    // Like an NPU driver that rejects ZE_INIT_FLAG_GPU_ONLY beside the GPU driver.
    let (_dir, options) = two_drivers(&[("FAKE_ZE_SECOND_INIT_RESULT", "0x78000001")]);
    let facts = query_with(&options);
    assert_eq!(facts.error, None);
    assert_eq!(facts.drivers.len(), 1);
    assert_eq!(facts.drivers[0].devices[0].device_id, "56a0");
}

/// The user-facing knobs of the binary: the timeout variable (valid and invalid) and a
/// bogus child mode.
#[test]
fn the_binary_honours_the_timeout_variable_and_rejects_a_bogus_child_mode() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/virtio-vm");
    let run = |timeout: &str| {
        let started = Instant::now();
        let output = Command::new(PROBE)
            .arg("--root")
            .arg(&fixture)
            .env("ZE_ENABLE_ALT_DRIVERS", fake_driver())
            .env("FAKE_ZE_HANG_IN", "zeDriverGet")
            .env("XPU_LEVEL_ZERO_TIMEOUT_SECS", timeout)
            .output()
            .expect("xpu-probe runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let facts: serde_json::Value = serde_json::from_slice(&output.stdout).expect("facts JSON");
        (started.elapsed(), facts)
    };
    let (took, facts) = run("0.5");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let meaning = facts["level_zero"]["error"]["meaning"]
        .as_str()
        .expect("an error")
        .to_string();
    assert!(
        meaning.contains("within 0.5 s during zeDriverGet"),
        "{meaning}"
    );

    // An invalid value is reported, not silently replaced (the query then runs with
    // the 20 s default, so it must not hang here: use a driver that answers).
    let output = Command::new(PROBE)
        .arg("--root")
        .arg(&fixture)
        .env("ZE_ENABLE_ALT_DRIVERS", fake_driver())
        .env("XPU_LEVEL_ZERO_TIMEOUT_SECS", "soon")
        .output()
        .expect("xpu-probe runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("XPU_LEVEL_ZERO_TIMEOUT_SECS=\"soon\" is not a number of seconds"),
        "{stderr}"
    );

    let output = Command::new(PROBE)
        .env("XPU_LEVEL_ZERO_CHILD", "bogus")
        .output()
        .expect("xpu-probe runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("XPU_LEVEL_ZERO_CHILD=\"bogus\": expected"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
