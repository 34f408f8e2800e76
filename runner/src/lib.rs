//! `xpu-runner`: load a model, pick a device, generate text, and serve it over an
//! OpenAI-compatible HTTP API.

pub mod engine;
pub mod sampling;
pub mod stop;
pub mod bench;
pub mod generate;
pub mod model;
pub mod server;
