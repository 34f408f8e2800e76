//! The CUDA engine's own binary, `xpu-runner-cuda`.
//!
//! candle's CUDA backend links the CUDA libraries when the program starts (cudarc's
//! `dynamic-linking`, which candle forces), so a binary built with the `cuda` feature cannot
//! even print its help where they are missing. The runner is therefore built twice: the
//! plain `xpu-runner`, which starts everywhere, and `xpu-runner-cuda` (the same program with
//! `cuda`), installed next to it. When CUDA is chosen, the plain binary checks that the CUDA
//! one starts here and then hands the whole process over to it (`exec`: same arguments, same
//! process id, same open sockets), so every command behaves as if it had been started on the
//! CUDA binary.

use std::fmt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The CUDA binary's file name, next to `xpu-runner`.
pub const FILE_NAME: &str = "xpu-runner-cuda";

/// What the CUDA libraries are and where they come from, for error messages.
const LIBRARIES_HINT: &str = "libcuda.so.1 comes with the NVIDIA driver; libcudart.so.13, \
libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 with CUDA 13 (its \
toolkit, or the pip packages nvidia-cuda-runtime, nvidia-cublas, nvidia-curand and \
nvidia-cuda-nvrtc): install them or add their directory to LD_LIBRARY_PATH";

/// Why the CUDA engine cannot be used from this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No `xpu-runner-cuda` next to the running binary.
    NotInstalled { expected: PathBuf },
    /// It is there, but the dynamic loader misses a library it needs.
    MissingLibrary { binary: PathBuf, library: String },
    /// It is there, but does not start for another reason.
    DoesNotStart { binary: PathBuf, detail: String },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotInstalled { expected } => write!(
                f,
                "this xpu-runner was built without CUDA, and the CUDA engine's binary {} is not \
                 installed next to it: install the exo-cuda package (or build the binary with \
                 scripts/build-cuda.sh and put it there), or choose --device vulkan or cpu",
                expected.display()
            ),
            Unavailable::MissingLibrary { binary, library } => write!(
                f,
                "the CUDA engine ({}) cannot start: the library {library} is missing. \
                 {LIBRARIES_HINT}",
                binary.display()
            ),
            Unavailable::DoesNotStart { binary, detail } => write!(
                f,
                "the CUDA engine ({}) does not start: {detail}",
                binary.display()
            ),
        }
    }
}

impl std::error::Error for Unavailable {}

/// Whether this binary holds the CUDA engine itself.
pub const fn compiled_in() -> bool {
    cfg!(feature = "cuda")
}

/// Where the CUDA binary belongs: next to the running one.
pub fn expected_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(FILE_NAME))
}

/// Whether CUDA can be used from this binary: always in the CUDA binary itself, else when
/// the CUDA binary is installed and starts here. Checked once per process (the check runs
/// the CUDA binary's `--version`).
pub fn available() -> Result<(), Unavailable> {
    if compiled_in() {
        return Ok(());
    }
    static CHECK: OnceLock<Result<(), Unavailable>> = OnceLock::new();
    CHECK
        .get_or_init(|| match expected_path() {
            Some(path) => check_starts(&path),
            None => Err(Unavailable::NotInstalled {
                expected: PathBuf::from(FILE_NAME),
            }),
        })
        .clone()
}

/// Runs `binary --version` and turns a failure into the reason, naming the missing
/// library when the dynamic loader names one.
pub fn check_starts(binary: &Path) -> Result<(), Unavailable> {
    if !binary.is_file() {
        return Err(Unavailable::NotInstalled {
            expected: binary.to_path_buf(),
        });
    }
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Unavailable::DoesNotStart {
            binary: binary.to_path_buf(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    match missing_library(&stderr) {
        Some(library) => Err(Unavailable::MissingLibrary {
            binary: binary.to_path_buf(),
            library,
        }),
        None => Err(Unavailable::DoesNotStart {
            binary: binary.to_path_buf(),
            detail: format!("{} ({})", stderr.trim(), output.status),
        }),
    }
}

/// The library in glibc's loader message `...: error while loading shared libraries:
/// libcublas.so.13: cannot open shared object file: ...`.
fn missing_library(stderr: &str) -> Option<String> {
    let (_, rest) = stderr.split_once("error while loading shared libraries: ")?;
    let (library, _) = rest.split_once(':')?;
    Some(library.trim().to_string())
}

/// Replaces this process with the CUDA binary, given this process's arguments. Returns
/// only if that fails.
pub fn hand_over() -> anyhow::Error {
    let Some(binary) = expected_path() else {
        return anyhow::anyhow!("cannot find the running binary's directory");
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| FILE_NAME.into());
    tracing::info!(
        "handing over to the CUDA engine's binary {}",
        binary.display()
    );
    let error = Command::new(&binary).arg0(arg0).args(args).exec();
    anyhow::anyhow!("cannot start {}: {error}", binary.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_message_names_the_library() {
        let stderr = "/opt/xpu/bin/xpu-runner-cuda: error while loading shared libraries: \
                      libcublas.so.13: cannot open shared object file: No such file or directory\n";
        assert_eq!(missing_library(stderr).as_deref(), Some("libcublas.so.13"));
        assert_eq!(missing_library("Segmentation fault"), None);
    }

    #[test]
    fn a_missing_binary_is_not_installed() {
        let path = Path::new("/nonexistent/xpu-runner-cuda");
        assert_eq!(
            check_starts(path),
            Err(Unavailable::NotInstalled {
                expected: path.into()
            })
        );
        let message = check_starts(path).unwrap_err().to_string();
        assert!(
            message.contains("exo-cuda") && message.contains("build-cuda.sh"),
            "{message}"
        );
    }
}
