# The stand-in `pkgs`: `import nixpkgs { system; overlays; config; }` gives a fixpoint of the
# builders below with the overlays applied, as nixpkgs does.
{
  system ? "x86_64-linux",
  overlays ? [ ],
  config ? { },
  ...
}:
let
  lib = import ./lib;

  # A real, trivial derivation (built with /bin/sh; the stand-in never builds anything that
  # matters) with the attributes callers read: passthru, meta, outputs.
  drv =
    name: attrs:
    let
      base = derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo stand-in > $out"
        ];
      };
      passthru = attrs.passthru or { };
    in
    base
    // passthru
    // {
      inherit passthru;
      meta = attrs.meta or { };
      standInArgs = attrs;
      overrideAttrs = f: drv name (attrs // f attrs);
    };

  unfreeAllowed = config.allowUnfree or false;

  base = final: {
    inherit lib system config;
    overlays = overlays;
    callPackage = lib.callPackageWith final;
    stdenv.hostPlatform = {
      isx86_64 = system == "x86_64-linux";
      inherit system;
    };

    rustPlatform = {
      buildRustPackage =
        args:
        assert lib.assertMsg (args ? cargoLock || args ? cargoHash) "buildRustPackage needs cargoLock or cargoHash";
        assert lib.assertMsg (builtins.pathExists args.cargoLock.lockFile) "cargoLock.lockFile does not exist";
        # (Checked on the filter: `nix flake check` evaluates read-only and cannot add the
        # filtered source to the store.)
        assert lib.assertMsg (lib.all (f: args.src.filter "${toString args.src.origSrc}/${f}" "regular") [
          "Cargo.toml"
          "Cargo.lock"
          "runner/src/main.rs"
          "probe/src/main.rs"
        ]) "the source filter drops workspace files";
        assert lib.assertMsg (builtins.pathExists (args.src.origSrc + "/Cargo.toml")) "the source has no Cargo.toml";
        drv "${args.pname}-${args.version}" args;
      callPackage = f: extra: f ({ rustc.llvm.version = "21.1.8"; } // extra);
    };
    fetchPypi =
      args:
      assert lib.assertMsg (args.format or "" == "wheel") "expected a wheel";
      assert lib.assertMsg (lib.hasPrefix "sha256-" args.hash) "fetchPypi needs an SRI hash";
      drv "${args.pname}-${args.version}-${args.python}-none-any.whl" args;
    # nixpkgs' fetchurl takes url, hash (SRI), name and passthru, among others.
    fetchurl =
      args:
      assert lib.assertMsg (lib.hasPrefix "sha256-" (args.hash or "")) "fetchurl needs an SRI hash";
      assert lib.assertMsg (lib.isString args.url) "fetchurl needs a url";
      drv (args.name or (baseNameOf args.url)) args;
    runCommand = name: env: command: drv name (env // { inherit command; });
    writeText = name: text: drv name { inherit text; };
    writeShellScriptBin =
      name: text:
      drv name {
        inherit text;
        meta.mainProgram = name;
      };
    mkShell = args: drv "nix-shell" args;
    testers.runNixOSTest =
      test:
      assert lib.assertMsg (builtins.isString test.testScript && test.testScript != "") "the VM test has no script";
      drv "vm-test-run-${test.name}" test;

    addDriverRunpath = drv "add-driver-runpath" { } // {
      driverLink = "/run/opengl-driver";
    };
    cudaPackages =
      assert lib.assertMsg unfreeAllowed "stand-in: CUDA is unfree; this pkgs was imported without config.allowUnfree";
      {
        flags = {
          cudaCapabilities = [
            "7.5"
            "8.0"
            "8.6"
            "8.9"
            "9.0"
          ];
          dropDots = builtins.replaceStrings [ "." ] [ "" ];
        };
      }
      // lib.genAttrs [
        "cuda_nvcc"
        "cccl"
        "cuda_cudart"
        "cuda_nvrtc"
        "libcublas"
        "libcurand"
      ] (n: drv n { });
    python3 = drv "python3" { } // {
      withPackages = f: drv "python3-env" { packages = f (lib.genAttrs [ "openai" ] (n: drv n { })); };
    };
    # llama-cpp's backend arguments (pkgs/by-name/ll/llama-cpp/package.nix); any other
    # argument is an error, as callPackage's override makes it.
    llama-cpp =
      let
        known = [
          "rpcSupport"
          "vulkanSupport"
          "cudaSupport"
          "rocmSupport"
        ];
      in
      drv "llama-cpp" { }
      // {
        override =
          args:
          assert lib.assertMsg (lib.all (n: lib.elem n known) (lib.attrNames args)) "llama-cpp has no argument ${toString (lib.subtractLists known (lib.attrNames args))}";
          assert lib.assertMsg (!(args.cudaSupport or false) || unfreeAllowed) "stand-in: CUDA is unfree; this pkgs was imported without config.allowUnfree";
          drv "llama-cpp" args;
      };
    intel-compute-runtime = drv "intel-compute-runtime" { } // {
      drivers = drv "intel-compute-runtime-drivers" { };
    };
  }
  // lib.genAttrs [
    "pkg-config"
    "oniguruma"
    "makeWrapper"
    "vulkan-loader"
    "level-zero"
    "autoAddDriverRunpath"
    "autoPatchelfHook"
    "unzip"
    "cargo"
    "rustc"
    "clippy"
    "rustfmt"
    "rust-analyzer"
    "cargo-nextest"
    "cmake"
    "vulkan-tools"
    "nixfmt"
    "nixfmt-tree"
    "nix"
    "intel-media-driver"
    "vpl-gpu-rt"
  ] (n: drv n { meta.mainProgram = n; });
in
lib.fix (lib.foldl' (acc: overlay: lib.extends overlay acc) base overlays)
