# xpu-runner, the OpenAI-compatible inference service, in one of three builds:
#   acceleration = "cpu"   -> exo-cpu:   candle on the CPU;
#   acceleration = "intel" -> exo-intel: plus the Vulkan (wgpu) engine for Intel GPUs, wrapped so
#                             it finds vulkan-loader, level-zero and the NixOS driver directory;
#   acceleration = "cuda"  -> exo-cuda:  the Vulkan engine as in exo-intel, plus xpu-runner-cuda, the
#                             runner built with candle's CUDA backend (unfree CUDA toolkit), which
#                             xpu-runner hands over to when CUDA is chosen (docs/cuda.md): the
#                             CUDA libraries are linked at start, so only that binary needs them.
# `passthru.acceleration` tells the NixOS module which devices the service may open.
{
  lib,
  stdenv,
  rustPlatform,
  pkg-config,
  oniguruma,
  makeWrapper,
  vulkan-loader,
  level-zero,
  addDriverRunpath,
  autoAddDriverRunpath,
  autoPatchelfHook,
  cudaPackages,
  src ? import ./source.nix { inherit lib; },
  acceleration ? "cpu",
  # CUDA compute capability to compile candle's kernels for, e.g. "8.0"; defaults to the lowest
  # of nixpkgs' cudaCapabilities that candle supports. PTX runs on newer GPUs through the JIT.
  cudaCapability ? null,
}:
let
  xpu = import ../lib;
  variant = xpu.accelerationVariant acceleration;
  intel = acceleration == "intel";
  cuda = acceleration == "cuda";

  minCudaCapability = "7.5";
  cudaCapabilityString =
    if cudaCapability != null then
      cudaCapability
    else
      let
        usable = builtins.filter (c: lib.versionAtLeast c minCudaCapability) cudaPackages.flags.cudaCapabilities;
      in
      if usable == [ ] then minCudaCapability else builtins.head usable;

  # candle-core 0.11's AVX-512 VNNI repacking needs LLVM 22 to select VPDPBUSD; older LLVMs
  # fail to compile it (nixpkgs' mistral-rs carries the same workaround). It falls back to the
  # portable kernels.
  rustcLlvmVersion = (rustPlatform.callPackage ({ rustc }: rustc) { }).llvm.version or "22";
  needsCandleVnniWorkaround = stdenv.hostPlatform.isx86_64 && lib.versionOlder rustcLlvmVersion "22";
in
assert lib.assertOneOf "acceleration" acceleration xpu.accelerations;
rustPlatform.buildRustPackage {
  pname = variant;
  version = xpu.workspaceVersion ../Cargo.toml;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "--package"
    "xpu-runner"
  ];
  # The main binary never links CUDA; on NVIDIA it runs the Vulkan engine, and the CUDA one
  # through xpu-runner-cuda, built below.
  buildFeatures = lib.optionals (intel || cuda) [ "vulkan" ];
  # Model tests need the fetched model and run through scripts/test.sh; the NixOS VM test
  # (checks.x86_64-linux.vm-exo-cpu) serves the real default model.
  doCheck = false;

  postPatch = lib.optionalString needsCandleVnniWorkaround ''
    # The vendor directory is flat (cargoLock) or nested per source (cargoHash); find both.
    files=$(find "$cargoDepsCopy"/ -path '*/candle-core-0.11.*/src/quantized/*' \( -name mod.rs -o -name repack.rs \))
    [ "$(echo "$files" | wc -w)" -eq 2 ] || { echo "candle-core 0.11 sources not found in $cargoDepsCopy" >&2; exit 1; }
    for f in $files; do
      substituteInPlace "$f" \
        --replace-fail '#[cfg(target_arch = "x86_64")]' '#[cfg(any())]' \
        --replace-fail '#[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]' '#[cfg(not(target_arch = "aarch64"))]'
    done
  '';

  nativeBuildInputs =
    [ pkg-config ]
    ++ lib.optionals (intel || cuda) [ makeWrapper ]
    ++ lib.optionals cuda [
      # autoAddDriverRunpath must come after autoPatchelfHook, which would drop the
      # /run/opengl-driver/lib entry that libcuda.so is found through.
      autoPatchelfHook
      autoAddDriverRunpath
      cudaPackages.cuda_nvcc
    ];

  buildInputs =
    [ oniguruma ]
    ++ lib.optionals cuda [
      cudaPackages.cccl
      cudaPackages.cuda_cudart
      cudaPackages.cuda_nvrtc
      cudaPackages.libcublas
      cudaPackages.libcurand
    ];

  env =
    {
      # tokenizers' onig feature: link nixpkgs' oniguruma instead of building a bundled copy.
      RUSTONIG_SYSTEM_LIBONIG = true;
    }
    // lib.optionalAttrs cuda {
      CUDA_COMPUTE_CAP = cudaPackages.flags.dropDots cudaCapabilityString;
      CUDA_TOOLKIT_ROOT_DIR = lib.getDev cudaPackages.cuda_cudart;
    };

  appendRunpaths = lib.optionals cuda [
    (lib.makeLibraryPath [
      cudaPackages.libcublas
      cudaPackages.libcurand
    ])
  ];

  postBuild = lib.optionalString cuda ''
    cargo build --offline -j "$NIX_BUILD_CORES" --release -p xpu-runner --features cuda,vulkan \
      --target-dir target-cuda
  '';
  postInstall = lib.optionalString cuda ''
    install -Dm755 "$(find target-cuda -path '*/release/xpu-runner' -type f)" $out/bin/xpu-runner-cuda
  '';

  # wgpu loads libvulkan.so.1 and the probe library loads libze_loader.so.1 at run time. The
  # Vulkan loader reads ICDs from /run/opengl-driver/share/vulkan (Mesa's ANV on NixOS); the
  # Level Zero loader finds libze_intel_gpu.so.1 in /run/opengl-driver/lib. Sysman gives the
  # memory and temperature telemetry shown in /metrics.
  # On NVIDIA the driver directory has libcuda.so.1 and the Vulkan ICD; the wrapper's variables
  # pass on to xpu-runner-cuda, which xpu-runner execs from its own directory.
  postFixup = lib.optionalString (intel || cuda) ''
    wrapProgram $out/bin/xpu-runner \
      --prefix LD_LIBRARY_PATH : ${
        lib.makeLibraryPath [
          vulkan-loader
          level-zero
        ]
      } \
      --suffix LD_LIBRARY_PATH : ${addDriverRunpath.driverLink}/lib \
      --set-default ZES_ENABLE_SYSMAN 1
  '';

  # xpu-runner starts without CUDA (the build machine has no driver); xpu-runner-cuda does not.
  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/xpu-runner --help > /dev/null
    $out/bin/xpu-runner serve --help > /dev/null
    runHook postInstallCheck
  '';

  passthru = {
    inherit acceleration variant;
    runnerDevice = xpu.runnerDevice acceleration;
  };

  meta = {
    description =
      {
        cpu = "OpenAI-compatible local LLM inference service (CPU build)";
        intel = "OpenAI-compatible local LLM inference service for Intel GPUs (Vulkan engine, Level Zero telemetry)";
        cuda = "OpenAI-compatible local LLM inference service for NVIDIA GPUs (CUDA build)";
      }
      .${acceleration};
    mainProgram = "xpu-runner";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux;
  };
}
