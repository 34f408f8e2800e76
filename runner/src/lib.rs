//! `xpu-runner`: load a model, pick a device, generate text, and serve it over an
//! OpenAI-compatible HTTP API.
//!
//! This crate has no `unsafe` code: memory maps, SIMD kernels and threads that share
//! buffers live in `xpu-gguf`, `xpu-cpu` and `xpu-vulkan`, behind safe interfaces.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cuda_binary;
pub mod device;
pub mod engine;
pub mod generate;
pub mod hub;
pub mod model;
pub mod sampling;
pub mod server;
pub mod stop;
