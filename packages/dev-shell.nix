# `nix develop`: the Rust toolchain and the run-time libraries of every engine, so cargo build,
# cargo test and the Nix tests run as in CI.
{
  mkShell,
  lib,
  cargo,
  rustc,
  clippy,
  rustfmt,
  rust-analyzer,
  cargo-nextest,
  pkg-config,
  oniguruma,
  cmake,
  level-zero,
  vulkan-loader,
  vulkan-tools,
  python3,
  nixfmt,
  unzip,
}:
mkShell {
  packages = [
    cargo
    rustc
    clippy
    rustfmt
    rust-analyzer
    cargo-nextest
    pkg-config
    oniguruma
    cmake
    vulkan-tools
    python3
    nixfmt
    unzip
  ];
  RUSTONIG_SYSTEM_LIBONIG = "1";
  # wgpu and level-zero-sys load these at run time. The Vulkan loader finds the host's
  # drivers (on NixOS in /run/opengl-driver); the engine tests accept lavapipe with
  # XPU_RUNNER_ALLOW_CPU_ADAPTER=1.
  LD_LIBRARY_PATH = lib.makeLibraryPath [
    vulkan-loader
    level-zero
  ];
}
