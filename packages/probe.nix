# xpu-probe: hardware facts (PCI sysfs, Level Zero, CPU) as JSON for the NixOS module.
{
  lib,
  rustPlatform,
  makeWrapper,
  level-zero,
  addDriverRunpath,
  src ? import ./source.nix { inherit lib; },
}:
rustPlatform.buildRustPackage {
  pname = "xpu-probe";
  version = (import ../lib).workspaceVersion ../Cargo.toml;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "--package"
    "xpu-probe"
  ];
  # The workspace tests run through scripts/test.sh (they need fixture drivers and fetched
  # models); the install check below proves the binary starts.
  doCheck = false;

  nativeBuildInputs = [ makeWrapper ];

  # level-zero-sys dlopens libze_loader.so.1. The loader finds the Intel driver
  # (libze_intel_gpu.so.1) in /run/opengl-driver/lib, which hardware.graphics provides.
  postFixup = ''
    wrapProgram $out/bin/xpu-probe \
      --prefix LD_LIBRARY_PATH : ${lib.makeLibraryPath [ level-zero ]} \
      --suffix LD_LIBRARY_PATH : ${addDriverRunpath.driverLink}/lib \
      --set-default ZES_ENABLE_SYSMAN 1
  '';

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/xpu-probe --help > /dev/null
    runHook postInstallCheck
  '';

  meta = {
    description = "Hardware facts for local LLM inference: PCI GPUs, Intel Level Zero, CPU features";
    mainProgram = "xpu-probe";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux;
  };
}
