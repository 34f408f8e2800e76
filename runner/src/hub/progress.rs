//! Download progress: an `indicatif` bar on a terminal, log lines otherwise
//! (one per tenth of the file, so a journal or CI log stays short).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub enum Progress {
    Bar(ProgressBar),
    Log {
        name: String,
        total: u64,
        done: u64,
        next_tenth: u64,
    },
}

impl Progress {
    /// Starts reporting the download of `name` (`total` bytes, `done` already there).
    pub fn start(name: &str, total: u64, done: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total)
                .with_position(done)
                .with_message(name.to_string());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid progress template")
                .progress_chars("=> "),
            );
            Progress::Bar(bar)
        } else {
            tracing::info!(
                "downloading {name}: {} of {} bytes already here",
                done,
                total
            );
            let next_tenth = tenth(done, total) + 1;
            Progress::Log {
                name: name.to_string(),
                total,
                done,
                next_tenth,
            }
        }
    }

    /// The download restarted from `position` (a resume, or the server ignored the range).
    pub fn set_position(&mut self, position: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(position),
            Progress::Log {
                done,
                total,
                next_tenth,
                ..
            } => {
                *done = position;
                *next_tenth = tenth(position, *total) + 1;
            }
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        match self {
            Progress::Bar(bar) => bar.inc(bytes),
            Progress::Log {
                name,
                total,
                done,
                next_tenth,
            } => {
                *done += bytes;
                if *next_tenth <= 10 && tenth(*done, *total) >= *next_tenth {
                    *next_tenth = tenth(*done, *total) + 1;
                    tracing::info!(
                        "downloading {name}: {}% ({} of {} bytes)",
                        percent(*done, *total),
                        done,
                        total
                    );
                }
            }
        }
    }

    /// Reports a message without breaking the bar.
    pub fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| tracing::warn!("{message}")),
            Progress::Log { .. } => tracing::warn!("{message}"),
        }
    }

    pub fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn tenth(done: u64, total: u64) -> u64 {
    percent(done, total) / 10
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (done.min(total) as u128 * 100 / total as u128) as u64
    }
}
