//! Reading files under the probe root, with every problem recorded as a warning.
//!
//! The probe never fails because one file is odd: a missing optional file is simply absent,
//! and an unreadable or garbage file becomes a line in the facts' top-level `warnings`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self, AtFlags, Mode, OFlags};

/// Files larger than this are not sysfs/procfs attributes; refuse to read them whole.
const MAX_ATTRIBUTE_BYTES: u64 = 4 << 20;

/// Reads files below a root directory (`/` normally, a captured tree in tests).
#[derive(Debug)]
pub struct Reader {
    root: PathBuf,
    warnings: Vec<String>,
}

impl Reader {
    /// A reader for `root`; paths given to it are relative to the root (`sys/...`, `proc/...`).
    pub fn new(root: &Path) -> Reader {
        Reader {
            root: root.to_path_buf(),
            warnings: Vec::new(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel` below the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Records a warning.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The warnings recorded so far, in order.
    pub fn into_warnings(self) -> Vec<String> {
        self.warnings
    }

    /// The path shown to users: as it would be on the probed machine (`/sys/...`).
    pub fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }

    /// Reads an optional file: `None` without a warning when it does not exist, `None` with a
    /// warning when it exists but cannot be read.
    pub fn optional(&mut self, path: &Path) -> Option<String> {
        self.read(path, false)
    }

    /// Reads a file that should exist: `None` with a warning when it is missing or unreadable.
    pub fn required(&mut self, path: &Path) -> Option<String> {
        self.read(path, true)
    }

    fn read(&mut self, path: &Path, required: bool) -> Option<String> {
        match read_attribute(path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if required {
                    let shown = self.display(path);
                    self.warn(format!("{shown} is missing"));
                }
                None
            }
            Err(err) => {
                let shown = self.display(path);
                self.warn(format!("cannot read {shown}: {err}"));
                None
            }
        }
    }

    /// Reads the optional entry `name` of `dir` (see [`Reader::optional`]).
    pub fn optional_in(&mut self, dir: &Dir, name: &str) -> Option<String> {
        self.read_in(dir, name, false)
    }

    /// Reads the entry `name` of `dir`, which should exist (see [`Reader::required`]).
    pub fn required_in(&mut self, dir: &Dir, name: &str) -> Option<String> {
        self.read_in(dir, name, true)
    }

    fn read_in(&mut self, dir: &Dir, name: &str, required: bool) -> Option<String> {
        match dir.read(name) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if required {
                    let shown = self.display(&dir.path().join(name));
                    self.warn(format!("{shown} is missing"));
                }
                None
            }
            Err(err) => {
                let shown = self.display(&dir.path().join(name));
                self.warn(format!("cannot read {shown}: {err}"));
                None
            }
        }
    }

    /// The file name of the target of the symlink `name` in `dir` (see [`Reader::link_name`]).
    pub fn link_name_in(&mut self, dir: &Dir, name: &str) -> Option<String> {
        let result = dir.read_link(name);
        self.link_target_name(&dir.path().join(name), result)
    }

    /// The file name of a symlink's target (`driver` -> `.../drivers/i915` gives `i915`).
    /// `None` without a warning when the link does not exist; a warning when it is not a link.
    pub fn link_name(&mut self, path: &Path) -> Option<String> {
        let result = std::fs::read_link(path);
        self.link_target_name(path, result)
    }

    fn link_target_name(
        &mut self,
        path: &Path,
        result: std::io::Result<PathBuf>,
    ) -> Option<String> {
        match result {
            Ok(target) => match target.file_name() {
                Some(name) => Some(name.to_string_lossy().into_owned()),
                None => {
                    let shown = self.display(path);
                    self.warn(format!(
                        "{shown} points to {}, which has no file name",
                        target.display()
                    ));
                    None
                }
            },
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => {
                let shown = self.display(path);
                self.warn(format!("cannot read link {shown}: {err}"));
                None
            }
        }
    }
}

/// Reads a small text file. Non-UTF-8 bytes are replaced, so garbage stays visible in warnings.
fn read_attribute(path: &Path) -> std::io::Result<String> {
    read_to_text(File::open(path)?)
}

fn read_to_text(file: File) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    file.take(MAX_ATTRIBUTE_BYTES).read_to_end(&mut bytes)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// An open directory whose entries are read relative to it (`openat`, `readlinkat`).
///
/// A PCI function has some twenty attributes; resolving `/sys/bus/pci/devices/<address>`
/// (a symlink deep into `/sys/devices`) once instead of once per attribute halves the
/// probe's kernel time on machines with hundreds of functions.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path` (following symlinks).
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let fd = fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the entry `name` as text.
    pub fn read(&self, name: &str) -> std::io::Result<String> {
        let fd = fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        read_to_text(File::from(fd))
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &str) -> std::io::Result<PathBuf> {
        let target = fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Whether the entry `name` exists (a dangling symlink counts as existing).
    pub fn contains(&self, name: &str) -> bool {
        fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }
}

/// Shortens a garbage value for a warning message.
pub fn excerpt(text: &str) -> String {
    const LIMIT: usize = 40;
    let trimmed = text.trim();
    let mut shown: String = trimmed.chars().take(LIMIT).collect();
    if trimmed.chars().count() > LIMIT {
        shown.push('…');
    }
    format!("{shown:?}")
}
