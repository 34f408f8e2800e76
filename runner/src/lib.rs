//! `xpu-runner`: load a model, pick a device, generate text, and serve it over an
//! OpenAI-compatible HTTP API.

pub mod engine;
pub mod sampling;
pub mod stop;
pub mod bench;
pub mod generate;
pub mod model;
// Gated while the server is brought up, so that a half-done edit never breaks others' builds.
#[cfg(feature = "serve-wip")]
pub mod server;
