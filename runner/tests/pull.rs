//! `xpu-runner pull`, `list`, `rm` and `--model hf:...` against a local HTTP server
//! that answers like the Hugging Face hub's API (`/api/models/{repo}/revision/{rev}`)
//! and file-resolve (`/{repo}/resolve/{rev}/{file}`) endpoints, serving the real
//! SmolLM2 GGUF. Our machines cannot reach the hub itself.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use support::{assert_one_line_error, test_model};

const REPO: &str = "test/SmolLM2-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_bytes() -> Arc<Vec<u8>> {
    static BYTES: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    BYTES
        .get_or_init(|| Arc::new(std::fs::read(test_model()).expect("read the test model")))
        .clone()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// How the fake hub behaves; tests change it between runs.
struct Behaviour {
    /// File names in the repository; every GGUF name serves the model's bytes.
    files: Vec<String>,
    /// sha256 the API reports (default: the real one).
    reported_sha256: Option<String>,
    /// Answer every request with this status instead.
    status: Option<u16>,
    /// Cut this many file responses after half the body.
    cuts_left: usize,
    /// Requests need `Authorization: Bearer` with this token.
    token: Option<String>,
}

/// One request the fake hub saw: path, Range header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct FakeHub {
    endpoint: String,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHub {
    fn start(files: &[&str]) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let behaviour = Arc::new(Mutex::new(Behaviour {
            files: files.iter().map(|s| s.to_string()).collect(),
            reported_sha256: None,
            status: None,
            cuts_left: 0,
            token: None,
        }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s) = (behaviour.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (b, s) = (b.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &b, &s);
                });
            }
        });
        FakeHub {
            endpoint,
            behaviour,
            seen,
        }
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn file_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains("/resolve/"))
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        match name.to_ascii_lowercase().as_str() {
            "range" => range = Some(value.trim().to_string()),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let mut out = stream;
    let mut behaviour = behaviour.lock().unwrap();
    if let Some(token) = &behaviour.token {
        if authorization.as_deref() != Some(&format!("Bearer {token}")) {
            return respond(
                &mut out,
                401,
                &[],
                b"{\"error\":\"Access to model is restricted\"}",
            );
        }
    }
    if let Some(status) = behaviour.status {
        return respond(&mut out, status, &[], b"{\"error\":\"fake\"}");
    }
    let bytes = model_bytes();
    let api_prefix = format!("/api/models/{REPO}/revision/");
    let resolve_prefix = format!("/{REPO}/resolve/");
    if path.starts_with(&api_prefix) {
        let sha = behaviour
            .reported_sha256
            .clone()
            .unwrap_or_else(|| sha256_hex(&bytes));
        let mut siblings = vec![serde_json::json!({"rfilename": "README.md", "size": 12})];
        for name in &behaviour.files {
            siblings.push(serde_json::json!({
                "rfilename": name,
                "size": bytes.len(),
                "lfs": {"sha256": sha, "size": bytes.len(), "pointerSize": 135},
            }));
        }
        let body = serde_json::json!({"id": REPO, "sha": "0123456789abcdef", "siblings": siblings})
            .to_string();
        return respond(
            &mut out,
            200,
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    let Some(rest) = path.strip_prefix(&resolve_prefix) else {
        return respond(&mut out, 404, &[], b"Repository not found");
    };
    let file = rest.split_once('/').map(|(_, file)| file).unwrap_or("");
    if !behaviour.files.iter().any(|f| f == file) {
        return respond(&mut out, 404, &[], b"Entry not found");
    }
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let body = &bytes[start.min(bytes.len())..];
    let (status, mut headers) = if range.is_some() {
        (
            206,
            vec![(
                "Content-Range",
                format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
        )
    } else {
        (200, vec![])
    };
    headers.push(("Accept-Ranges", "bytes".into()));
    if behaviour.cuts_left > 0 {
        behaviour.cuts_left -= 1;
        drop(behaviour);
        write_head(&mut out, status, &headers, body.len())?;
        out.write_all(&body[..body.len() / 2])?;
        out.flush()?;
        return out.shutdown(Shutdown::Both);
    }
    drop(behaviour);
    respond(&mut out, status, &headers, body)
}

fn write_head(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    length: usize,
) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status} Fake\r\nContent-Length: {length}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    write_head(out, status, headers, body.len())?;
    out.write_all(body)?;
    out.flush()
}

/// Runs `xpu-runner` with the cache in `models` and the hub at `endpoint`.
fn runner(models: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xpu-runner"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("STATE_DIRECTORY")
        .env("HF_HOME", models.join("no-hf-home"))
        .env("XPU_MODELS_DIR", models)
        .env("HF_ENDPOINT", endpoint);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("start xpu-runner")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cached_path(models: &Path) -> PathBuf {
    models.join("hf").join(REPO).join("main").join(FILE)
}

fn file_ref() -> String {
    format!("hf:{REPO}/{FILE}")
}

fn assert_same_as_model(path: &Path) {
    let got = std::fs::read(path).unwrap();
    assert!(
        got.as_slice() == model_bytes().as_slice(),
        "{} differs from the served model",
        path.display()
    );
}

#[test]
fn pull_downloads_verifies_and_is_used_offline_by_generate() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let out = runner(models.path(), &hub.endpoint, &["pull", &file_ref()], &[]);
    let path = PathBuf::from(stdout(&out));
    assert_eq!(path, cached_path(models.path()));
    assert_same_as_model(&path);
    assert!(!models
        .path()
        .join("hf")
        .join(REPO)
        .join("main")
        .join(format!("{FILE}.part"))
        .exists());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("downloading") && stderr.contains("100%"),
        "no progress lines: {stderr}"
    );

    // A second pull asks the hub, finds the cached file identical, and downloads nothing.
    let before = hub.file_requests().len();
    stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    ));
    assert_eq!(hub.file_requests().len(), before);

    // Commands that load a model take the reference, from the cache, offline.
    let requests = hub.seen().len();
    let out = runner(
        models.path(),
        "http://127.0.0.1:9",
        &[
            "generate",
            "--model",
            &file_ref(),
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "3",
            "--temperature",
            "0",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(!stdout(&out).is_empty());
    assert_eq!(
        hub.seen().len(),
        requests,
        "generate must not ask the hub for a cached model"
    );
}

#[test]
fn a_cut_connection_is_resumed_with_a_range_request() {
    let hub = FakeHub::start(&[FILE]);
    hub.set(|b| b.cuts_left = 1);
    let models = tempfile::tempdir().unwrap();
    let path = PathBuf::from(stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    )));
    assert_same_as_model(&path);
    let files = hub.file_requests();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].range, None);
    let half = model_bytes().len() / 2;
    assert_eq!(
        files[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn a_download_that_keeps_failing_resumes_in_the_next_run() {
    let hub = FakeHub::start(&[FILE]);
    hub.set(|b| b.cuts_left = 100);
    let models = tempfile::tempdir().unwrap();
    let out = runner(models.path(), &hub.endpoint, &["pull", &file_ref()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    let final_path = cached_path(models.path());
    let part = PathBuf::from(format!("{}.part", final_path.display()));
    assert!(
        !final_path.exists(),
        "a failed download must not leave the final file"
    );
    let kept = std::fs::metadata(&part)
        .expect("the partial download is kept")
        .len();
    assert!(kept > 0 && kept < model_bytes().len() as u64);

    hub.set(|b| b.cuts_left = 0);
    let path = PathBuf::from(stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    )));
    assert_same_as_model(&path);
    assert!(!part.exists());
    let last = hub.file_requests().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={kept}-")));
}

#[test]
fn a_checksum_mismatch_deletes_the_download() {
    let hub = FakeHub::start(&[FILE]);
    hub.set(|b| b.reported_sha256 = Some("0".repeat(64)));
    let models = tempfile::tempdir().unwrap();
    let out = runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[("RUST_LOG", "warn")],
    );
    let line = assert_one_line_error(
        &out,
        &["checksum mismatch", FILE, &"0".repeat(64), "deleted"],
    );
    assert!(line.contains(&sha256_hex(&model_bytes())), "{line}");
    let final_path = cached_path(models.path());
    assert!(!final_path.exists());
    assert!(!PathBuf::from(format!("{}.part", final_path.display())).exists());
}

#[test]
fn hub_errors_are_explained() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let pull = |reference: &str, env: &[(&str, &str)]| {
        runner(models.path(), &hub.endpoint, &["pull", reference], env)
    };

    hub.set(|b| b.token = Some("hf_secret".into()));
    assert_one_line_error(
        &pull(&file_ref(), &[]),
        &["401", "gated or private", "HF_TOKEN"],
    );
    assert_one_line_error(
        &pull(&file_ref(), &[("HF_TOKEN", "hf_wrong")]),
        &["401", "token was refused"],
    );
    // The right token, from the environment or from $HF_HOME/token, gets the file.
    stdout(&pull(&file_ref(), &[("HF_TOKEN", "hf_secret")]));
    let hf_home = models.path().join("hf-home");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_secret\n").unwrap();
    stdout(&pull(
        &file_ref(),
        &[("HF_HOME", hf_home.to_str().unwrap())],
    ));
    hub.set(|b| b.token = None);

    hub.set(|b| b.status = Some(403));
    assert_one_line_error(&pull(&file_ref(), &[]), &["403", "HF_TOKEN"]);
    hub.set(|b| b.status = Some(500));
    assert_one_line_error(&pull(&file_ref(), &[]), &["500", "try again later"]);
    hub.set(|b| b.status = None);

    assert_one_line_error(
        &pull("hf:test/missing/x.gguf", &[]),
        &["404", "test/missing", "not found"],
    );
    assert_one_line_error(
        &pull(&format!("hf:{REPO}/other.gguf"), &[]),
        &["other.gguf", "not found", FILE],
    );

    let out = runner(
        models.path(),
        "http://127.0.0.1:9",
        &["pull", &format!("hf:{REPO}/other.gguf")],
        &[],
    );
    assert_one_line_error(&out, &["cannot reach", "127.0.0.1:9", "HF_HUB_OFFLINE"]);
    assert_one_line_error(
        &pull("hf:test/repo", &[]),
        &["bad model reference", "no file"],
    );
    assert_one_line_error(
        &pull("some/local.gguf", &[]),
        &["local path", "hf:OWNER/REPO"],
    );
}

#[test]
fn a_full_disk_is_reported() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let final_path = cached_path(models.path());
    std::fs::create_dir_all(final_path.parent().unwrap()).unwrap();
    // Writes to /dev/full fail with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", format!("{}.part", final_path.display())).unwrap();
    let out = runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[("RUST_LOG", "warn")],
    );
    assert_one_line_error(&out, &["disk is full", "free some space"]);
    assert!(!final_path.exists());
}

#[test]
fn a_quantization_picks_its_file_or_lists_the_candidates() {
    let hub = FakeHub::start(&[FILE, "SmolLM2-135M-Instruct.Q8_0.gguf"]);
    let models = tempfile::tempdir().unwrap();
    let path = PathBuf::from(stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &format!("hf:{REPO}:q4_1")],
        &[],
    )));
    assert_eq!(path, cached_path(models.path()));
    assert_same_as_model(&path);

    let out = runner(
        models.path(),
        &hub.endpoint,
        &["pull", &format!("hf:{REPO}:Q2_K")],
        &[],
    );
    assert_one_line_error(
        &out,
        &["no GGUF file of quantization Q2_K", FILE, "Q8_0.gguf"],
    );

    hub.set(|b| b.files.push("subdir/SmolLM2-Q4_1.gguf".into()));
    let out = runner(
        models.path(),
        &hub.endpoint,
        &["pull", &format!("hf:{REPO}:Q4_1")],
        &[],
    );
    assert_one_line_error(
        &out,
        &["matches several files", FILE, "subdir/SmolLM2-Q4_1.gguf"],
    );
}

#[test]
fn list_and_rm() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| runner(models.path(), &hub.endpoint, args, &[]);
    assert_eq!(stdout(&run(&["list"])), "");

    stdout(&run(&["pull", &file_ref()]));
    // A file put there by scripts/fetch-model.sh is listed under its own name.
    std::fs::write(models.path().join("local.gguf"), b"GGUF").unwrap();
    let listing = stdout(&run(&["list"]));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with(&format!("hf/{REPO}/main/{FILE}")) && lines[1].ends_with(&file_ref()),
        "{listing}"
    );
    assert!(lines[1].contains("93.8 MiB"), "{listing}");
    assert!(lines[2].starts_with("local.gguf"), "{listing}");

    // A cached name is a model reference too.
    let out = run(&[
        "generate",
        "--model",
        "local.gguf",
        "--prompt",
        "x",
        "--max-tokens",
        "1",
    ]);
    assert_one_line_error(&out, &["local.gguf"]);

    assert!(stdout(&run(&["rm", &file_ref()])).starts_with("removed "));
    assert!(stdout(&run(&["rm", "local.gguf"])).starts_with("removed "));
    assert_eq!(stdout(&run(&["list"])), "");
    assert!(!models.path().join("hf").exists());
    assert_one_line_error(
        &run(&["rm", &file_ref()]),
        &["not in the model cache", "xpu-runner list"],
    );
    assert_one_line_error(&run(&["rm", "../etc/passwd"]), &["not in the model cache"]);
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let out = runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &offline,
    );
    assert_one_line_error(&out, &["not in the model cache", "HF_HUB_OFFLINE"]);
    assert!(
        hub.seen().is_empty(),
        "offline mode asked the hub: {:?}",
        hub.seen()
    );

    stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    ));
    let requests = hub.seen().len();
    let quant = format!("hf:{REPO}:Q4_1");
    let path = stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &quant],
        &offline,
    ));
    assert_eq!(PathBuf::from(path), cached_path(models.path()));
    assert_eq!(hub.seen().len(), requests);
}

#[test]
fn a_pull_replaces_a_corrupted_cached_file() {
    let hub = FakeHub::start(&[FILE]);
    let models = tempfile::tempdir().unwrap();
    let path = PathBuf::from(stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    )));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    stdout(&runner(
        models.path(),
        &hub.endpoint,
        &["pull", &file_ref()],
        &[],
    ));
    assert_same_as_model(&path);
}
