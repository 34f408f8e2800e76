//! Writing the facts file atomically: a temporary file in the target's directory, flushed to
//! disk, then renamed over the target. Readers see the old file or the new one, never half.

use std::io::Write;
use std::path::Path;

/// Why the output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Writes `contents` to `path` atomically, with mode 0644 (facts are not secret; the service
/// user and Nix evaluation must be able to read them).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let error = |source| WriteError {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if path.is_dir() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory; give a file name",
        )));
    }
    let mut file = tempfile::Builder::new()
        .prefix(".xpu-probe-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(error)?;
    }
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|err| error(err.error))?;
    Ok(())
}
