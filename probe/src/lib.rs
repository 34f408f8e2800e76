//! `xpu-probe`: hardware facts for local inference.
pub mod level_zero;
