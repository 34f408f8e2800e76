//! The plain `xpu-runner` (built without CUDA) starts without any CUDA library and hands
//! commands that come to CUDA over to `xpu-runner-cuda` next to it. The CUDA binary here is
//! a small C program linked against a stand-in `libcuda.so.1`: with the library on the path
//! it starts and prints the arguments it was given; without it the real dynamic loader
//! refuses to start it, as it refuses the real CUDA binary on a machine without the driver.

mod serve_support;
mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::assert_one_line_error;

/// A directory holding a copy of the plain runner, and optionally the stand-in CUDA
/// binary and its library.
struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn plain() -> Install {
        let dir = tempfile::tempdir().unwrap();
        // A hard link where possible: a copy is written through a file descriptor that a
        // process forked meanwhile by another test inherits, and executing the copy then
        // fails with "Text file busy".
        let (from, to) = (
            env!("CARGO_BIN_EXE_xpu-runner"),
            dir.path().join("xpu-runner"),
        );
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).unwrap();
        }
        Install { dir }
    }

    fn with_cuda_binary() -> Install {
        let install = Install::plain();
        let dir = install.dir.path();
        let lib_dir = install.lib_dir();
        std::fs::create_dir(&lib_dir).unwrap();
        std::fs::write(
            dir.join("cuda.c"),
            "int cuInit(unsigned flags) { return (int)flags; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("main.c"),
            r#"#include <stdio.h>
int cuInit(unsigned flags);
int main(int argc, char **argv) {
    printf("cuda binary started:");
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\n");
    return cuInit(0);
}
"#,
        )
        .unwrap();
        cc(&[
            "-shared".as_ref(),
            "-fPIC".as_ref(),
            "-Wl,-soname,libcuda.so.1".as_ref(),
            "-o".as_ref(),
            lib_dir.join("libcuda.so.1").as_os_str(),
            dir.join("cuda.c").as_os_str(),
        ]);
        cc(&[
            "-o".as_ref(),
            dir.join("xpu-runner-cuda").as_os_str(),
            dir.join("main.c").as_os_str(),
            format!("-L{}", lib_dir.display()).as_ref(),
            "-l:libcuda.so.1".as_ref(),
        ]);
        install
    }

    fn lib_dir(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    fn run(&self, args: &[&str], library_path: Option<&Path>) -> Output {
        let mut command = Command::new(self.dir.path().join("xpu-runner"));
        command.args(args).env_remove("LD_LIBRARY_PATH");
        if let Some(path) = library_path {
            command.env("LD_LIBRARY_PATH", path);
        }
        command.output().unwrap()
    }
}

fn cc(args: &[&OsStr]) {
    let status = Command::new("cc")
        .args(args)
        .status()
        .expect("the tests need a C compiler (cc)");
    assert!(status.success(), "cc {args:?} failed");
}

const GENERATE_ON_CUDA: &[&str] = &[
    "generate", "--device", "cuda", "--model", "m.gguf", "--prompt", "hi",
];

#[test]
fn device_cuda_without_the_cuda_binary_names_it() {
    let out = Install::plain().run(GENERATE_ON_CUDA, None);
    assert_one_line_error(
        &out,
        &[
            "--device cuda",
            "xpu-runner-cuda",
            "exo-cuda",
            "build-cuda.sh",
        ],
    );
}

#[test]
fn device_cuda_without_the_driver_library_names_the_library() {
    let install = Install::with_cuda_binary();
    let out = install.run(GENERATE_ON_CUDA, None);
    assert_one_line_error(
        &out,
        &[
            "--device cuda",
            "libcuda.so.1",
            "NVIDIA driver",
            "LD_LIBRARY_PATH",
        ],
    );
    let out = install.run(
        &[
            "serve", "--device", "cuda", "--model", "m.gguf", "--port", "0",
        ],
        None,
    );
    assert_one_line_error(&out, &["libcuda.so.1"]);
}

#[test]
fn device_cuda_hands_the_command_over_with_its_arguments() {
    let install = Install::with_cuda_binary();
    let out = install.run(GENERATE_ON_CUDA, Some(&install.lib_dir()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.trim(),
        format!("cuda binary started: {}", GENERATE_ON_CUDA.join(" "))
    );
}

#[test]
fn auto_on_nvidia_follows_the_engine_order() {
    let install = Install::with_cuda_binary();
    let facts = install.dir.path().join("facts.json");
    std::fs::write(
        &facts,
        r#"{"schema_version": 1, "recommendation": {"variant": "exo-cuda", "reasons": ["an NVIDIA GPU"], "warnings": []}}"#,
    )
    .unwrap();
    let facts = facts.to_string_lossy().into_owned();
    let args = [
        "serve",
        "--device",
        "auto",
        "--facts",
        &facts,
        "--model",
        "/nonexistent/m.gguf",
        "--port",
        "0",
    ];
    let out = install.run(&args, Some(&install.lib_dir()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The first of the NVIDIA engines that this build can run here takes it;
    // `xpu_runner::device` puts Vulkan first. Vulkan needs a Vulkan GPU adapter (lavapipe, a
    // CPU adapter, does not count), so a build without Vulkan, or a host without such an
    // adapter (CI), goes on to CUDA.
    #[cfg(feature = "vulkan")]
    let vulkan_gpu = xpu_vulkan::gpu_adapter().is_ok();
    #[cfg(not(feature = "vulkan"))]
    let vulkan_gpu = false;
    let first = xpu_runner::device::NVIDIA_ENGINES
        .into_iter()
        .find(|d| match d {
            xpu_runner::engine::Device::Cuda => true,
            xpu_runner::engine::Device::Vulkan => vulkan_gpu,
            other => other.compiled_in(),
        })
        .unwrap();
    if first == xpu_runner::engine::Device::Cuda {
        assert!(
            stdout.starts_with("cuda binary started: serve --device auto"),
            "{out:?}"
        );
    } else {
        assert!(!stdout.contains("cuda binary started"), "{out:?}");
        // It stayed here and failed on the missing model instead.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.gguf"),
            "{out:?}"
        );
    }
}

#[test]
fn auto_elsewhere_never_starts_the_cuda_binary() {
    let install = Install::with_cuda_binary();
    let facts = install.dir.path().join("facts.json");
    std::fs::write(
        &facts,
        r#"{"schema_version": 1, "recommendation": {"variant": "exo-cpu", "reasons": [], "warnings": []}}"#,
    )
    .unwrap();
    let facts = facts.to_string_lossy().into_owned();
    let args = [
        "serve",
        "--facts",
        &facts,
        "--model",
        "/nonexistent/m.gguf",
        "--port",
        "0",
    ];
    let out = install.run(&args, Some(&install.lib_dir()));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("cuda binary started"),
        "{out:?}"
    );
    assert!(!out.status.success());
}

/// The dashboard's CUDA entry on an NVIDIA machine served by the plain binary on the CPU:
/// `compiled_in` (whether this install can run the engine) follows whether the CUDA binary
/// beside it starts, not only whether the plain binary has the feature.
fn dashboard_cuda_entry(install: &Install) -> serde_json::Value {
    let facts = install.dir.path().join("facts.json");
    std::fs::write(
        &facts,
        r#"{"schema_version": 1, "gpus": [{"pci_address": "0000:17:00.0", "vendor": "nvidia",
            "name": "NVIDIA H100", "compute_capable": true}]}"#,
    )
    .unwrap();
    let mut cmd = Command::new(install.dir.path().join("xpu-runner"));
    cmd.arg("serve")
        .arg("--model")
        .arg(serve_support::model_path())
        .args(["--device", "cpu", "--ctx", "256", "--port", "0", "--facts"])
        .arg(&facts)
        .env("LD_LIBRARY_PATH", install.lib_dir())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut server = serve_support::Server::spawn(cmd, None);
    server.wait_ready();
    let doc: serde_json::Value = serde_json::from_str(
        &serve_support::request(server.port, "GET", "/v1/dashboard", None)
            .unwrap()
            .body,
    )
    .unwrap();
    server.sigterm();
    let engines = doc["engines"].as_array().unwrap();
    let cuda = engines.iter().find(|e| e["device"] == "cuda");
    cuda.unwrap_or_else(|| panic!("no cuda entry: {engines:?}"))
        .clone()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn the_dashboard_offers_cuda_when_the_cuda_binary_starts() {
    let with = dashboard_cuda_entry(&Install::with_cuda_binary());
    assert_eq!(with["compiled_in"], true, "{with}");
    let without = dashboard_cuda_entry(&Install::plain());
    assert_eq!(without["compiled_in"], false, "{without}");
}
