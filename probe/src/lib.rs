//! `xpu-probe`: hardware facts for local inference.
