# Unit tests of the pure functions in lib/, in nix-unit's shape ({ testX = { expr; expected; }; }).
# They need builtins only. Run them with scripts/test-nix.sh, or directly:
#   nix-instantiate --eval --strict --json tests/nix/run-lib-tests.nix
# `expectedError = true` tests pass when evaluating `expr` throws (builtins.tryEval cannot read
# the message; scripts/test-nix.sh checks the messages users see separately).
let
  xpu = import ../../lib;
  fixture = name: xpu.readFacts (./fixtures + "/facts-${name}.json");
  intelDgpu = fixture "intel-dgpu";
  intelIgpu = fixture "intel-igpu";
  nvidia = fixture "nvidia";
  cpuOnly = fixture "cpu";
  unknownSchema = fixture "unknown-schema";
  badRecommendation = fixture "bad-recommendation";

  # Facts the probe may write on a machine that a previous rebuild already configured: the
  # force_probe parameter is present on the running kernel, so the recommendation no longer
  # lists it, but the GPU still needs it.
  intelAlreadyProbed = intelDgpu // {
    recommendation = intelDgpu.recommendation // {
      kernel_params = [ ];
    };
    gpus = map (
      g:
      if g.vendor == "intel" then
        g
        // {
          intel = g.intel // {
            force_probe = g.intel.force_probe // {
              present = true;
            };
          };
        }
      else
        g
    ) intelDgpu.gpus;
  };
in
{
  # --- variants ---------------------------------------------------------------------------
  testVariantIntelDgpu = {
    expr = xpu.recommendedVariant intelDgpu;
    expected = "exo-intel";
  };
  testVariantIntelIgpu = {
    expr = xpu.recommendedVariant intelIgpu;
    expected = "exo-intel";
  };
  testVariantNvidia = {
    expr = xpu.recommendedVariant nvidia;
    expected = "exo-cuda";
  };
  testVariantCpuOnly = {
    expr = xpu.recommendedVariant cpuOnly;
    expected = "exo-cpu";
  };
  testVariantNoFacts = {
    expr = xpu.recommendedVariant { };
    expected = "exo-cpu";
  };
  testVariantUnknownSchemaFallsBackToCpu = {
    expr = xpu.recommendedVariant unknownSchema;
    expected = "exo-cpu";
  };
  testVariantBadRecommendationFallsBackToCpu = {
    expr = xpu.recommendedVariant badRecommendation;
    expected = "exo-cpu";
  };
  testVariantAccelerationRoundTrip = {
    expr = map (v: xpu.accelerationVariant (xpu.variantAcceleration v)) xpu.variants;
    expected = xpu.variants;
  };
  testUnknownVariantThrows = {
    expr = xpu.variantAcceleration "exo-rocm";
    expectedError = true;
  };
  testRunnerDevice = {
    expr = map xpu.runnerDevice [
      "intel"
      "cuda"
      "cpu"
    ];
    expected = [
      "vulkan"
      "cuda"
      "cpu"
    ];
  };

  # --- validation -------------------------------------------------------------------------
  testValidFactsHaveNoErrors = {
    expr = map xpu.factsErrors [
      intelDgpu
      intelIgpu
      nvidia
      cpuOnly
    ];
    expected = [
      [ ]
      [ ]
      [ ]
      [ ]
    ];
  };
  testUnknownSchemaIsOneError = {
    expr = builtins.length (xpu.factsErrors unknownSchema);
    expected = 1;
  };
  testUnknownSchemaMessageNamesVersions = {
    expr =
      builtins.match ".*schema_version 2, but this flake understands 1.*xpu-probe.*" (
        builtins.head (xpu.factsErrors unknownSchema)
      ) != null;
    expected = true;
  };
  testMissingSchemaVersion = {
    expr = builtins.length (xpu.factsErrors { recommendation.variant = "exo-cpu"; });
    expected = 1;
  };
  testNotAnObject = {
    expr = builtins.length (xpu.factsErrors [ 1 ]);
    expected = 1;
  };
  # variant, supplementary_groups type, bad kernel parameter, bad DeviceAllow rule.
  testBadRecommendationErrors = {
    expr = builtins.length (xpu.factsErrors badRecommendation);
    expected = 4;
  };
  testBadKernelParamIsNamed = {
    expr = builtins.any (m: builtins.match ".*'quiet'.*" m != null) (xpu.factsErrors badRecommendation);
    expected = true;
  };

  # --- kernel parameters ------------------------------------------------------------------
  testKernelParamsIntelDgpu = {
    expr = xpu.kernelParams {
      facts = intelDgpu;
      variant = "exo-intel";
    };
    expected = [ "xe.force_probe=e20b" ];
  };
  testKernelParamsKeptWhenAlreadyPresent = {
    expr = xpu.kernelParams {
      facts = intelAlreadyProbed;
      variant = "exo-intel";
    };
    expected = [ "xe.force_probe=e20b" ];
  };
  testKernelParamsIntelIgpuNone = {
    expr = xpu.kernelParams {
      facts = intelIgpu;
      variant = "exo-intel";
    };
    expected = [ ];
  };
  testKernelParamsOnlyForIntelVariant = {
    expr = xpu.kernelParams {
      facts = intelDgpu;
      variant = "exo-cpu";
    };
    expected = [ ];
  };
  testKernelParamsNvidiaNone = {
    expr = xpu.kernelParams {
      facts = nvidia;
      variant = "exo-cuda";
    };
    expected = [ ];
  };
  testKernelParamsNeverFromInvalidFacts = {
    expr = xpu.kernelParams {
      facts = badRecommendation;
      variant = "exo-intel";
    };
    expected = [ ];
  };
  testForceProbeParamShapes = {
    expr = map xpu.isForceProbeParam [
      "xe.force_probe=e20b"
      "i915.force_probe=!e20b"
      "i915.force_probe=*"
      "quiet"
      "xe.force_probe=e20b mitigations=off"
      "nvidia.NVreg_foo=1"
    ];
    expected = [
      true
      true
      true
      false
      false
      false
    ];
  };
  testIntelRequiredDrivers = {
    expr = map xpu.intelRequiredDrivers [
      intelDgpu
      intelIgpu
      nvidia
    ];
    expected = [
      [ "xe" ]
      [ "i915" ]
      [ ]
    ];
  };

  # --- device rules -----------------------------------------------------------------------
  testDeviceAccessIntel = {
    expr = xpu.deviceAccess { acceleration = "intel"; };
    expected = {
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [ "char-drm" ];
      SupplementaryGroups = [ "render" ];
    };
  };
  testDeviceAccessIntelAddsFactsGroups = {
    expr =
      (xpu.deviceAccess {
        acceleration = "intel";
        facts = intelDgpu;
      }).SupplementaryGroups;
    expected = [
      "render"
      "video"
    ];
  };
  testDeviceAccessCuda = {
    expr = xpu.deviceAccess { acceleration = "cuda"; };
    expected = {
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [
        "char-nvidiactl"
        "char-nvidia-caps"
        "char-nvidia-frontend"
        "char-nvidia-uvm"
      ];
      SupplementaryGroups = [ ];
    };
  };
  testDeviceAccessCudaAddsFactsNodes = {
    expr =
      (xpu.deviceAccess {
        acceleration = "cuda";
        facts = nvidia;
      }).DeviceAllow;
    expected = [
      "char-nvidiactl"
      "char-nvidia-caps"
      "char-nvidia-frontend"
      "char-nvidia-uvm"
      "/dev/nvidia0 rw"
    ];
  };
  testDeviceAccessCpu = {
    expr = xpu.deviceAccess { acceleration = "cpu"; };
    expected = {
      PrivateDevices = true;
      SupplementaryGroups = [ ];
    };
  };
  # A CPU package on a GPU host gets no devices, whatever the facts say.
  testDeviceAccessCpuIgnoresGpuFacts = {
    expr = xpu.deviceAccess {
      acceleration = "cpu";
      facts = nvidia;
    };
    expected = {
      PrivateDevices = true;
      SupplementaryGroups = [ ];
    };
  };
  # An Intel package on an NVIDIA host must not inherit the NVIDIA nodes.
  testDeviceAccessMismatchedFactsIgnored = {
    expr =
      (xpu.deviceAccess {
        acceleration = "intel";
        facts = nvidia;
      }).DeviceAllow;
    expected = [ "char-drm" ];
  };
  testDeviceAccessUnknownAccelerationThrows = {
    expr = xpu.deviceAccess { acceleration = "rocm"; };
    expectedError = true;
  };
  testDeviceAllowRuleShapes = {
    expr = map xpu.isDeviceAllowRule [
      "char-drm"
      "char-nvidia-uvm"
      "/dev/nvidia0 rw"
      "/dev/dri/renderD128"
      "rm -rf /"
      "char-drm; echo"
    ];
    expected = [
      true
      true
      true
      true
      false
      false
    ];
  };

  # --- hardening --------------------------------------------------------------------------
  testHardeningProcSubset = {
    expr = map (a: (xpu.hardening a).ProcSubset) xpu.accelerations;
    expected = [
      "all"
      "all"
      "all"
    ];
  };
  testHardeningCpuHasNoResourcesSyscalls = {
    expr = (xpu.hardening "cpu").SystemCallFilter;
    expected = [
      "@system-service"
      "~@privileged"
    ];
  };
  testHardeningGpuProcSubsetAndResources = {
    expr = {
      inherit (xpu.hardening "intel") ProcSubset SystemCallFilter;
    };
    expected = {
      ProcSubset = "all";
      SystemCallFilter = [
        "@system-service @resources"
        "~@privileged"
      ];
    };
  };
  testHardeningCoreDirectives = {
    expr = {
      inherit (xpu.hardening "cuda")
        ProtectSystem
        NoNewPrivileges
        CapabilityBoundingSet
        MemoryDenyWriteExecute
        PrivateUsers
        RestrictAddressFamilies
        ;
    };
    expected = {
      ProtectSystem = "strict";
      NoNewPrivileges = true;
      CapabilityBoundingSet = [ "" ];
      MemoryDenyWriteExecute = true;
      PrivateUsers = true;
      RestrictAddressFamilies = [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
      ];
    };
  };

  # --- ExecStart --------------------------------------------------------------------------
  testEscapeSystemdExecArgs = {
    expr = xpu.escapeSystemdExecArgs [
      "plain"
      "with space"
      "100%"
      "$HOME"
      "quote\"d"
      52415
    ];
    expected = ''"plain" "with space" "100%%" "$$HOME" "quote\"d" "52415"'';
  };
  testServeArgsFull = {
    expr = xpu.serveArgs {
      model = "/nix/store/x-model.gguf";
      modelId = "smollm2";
      host = "127.0.0.1";
      port = 52415;
      device = "vulkan";
      factsFile = "/nix/store/y-facts.json";
      apiKeyArg = "%d/api-key";
      extraArgs = [
        "--ctx"
        "4096"
      ];
    };
    expected = ''"serve" "--model" "/nix/store/x-model.gguf" "--model-id" "smollm2" "--host" "127.0.0.1" "--port" "52415" "--device" "vulkan" "--facts" "/nix/store/y-facts.json" --api-key-file %d/api-key "--ctx" "4096"'';
  };
  testServeArgsMinimal = {
    expr = xpu.serveArgs {
      model = "/m.gguf";
      host = "::1";
      port = 8080;
      device = "cpu";
    };
    expected = ''"serve" "--model" "/m.gguf" "--host" "::1" "--port" "8080" "--device" "cpu"'';
  };
  testListenAddress = {
    expr = [
      (xpu.listenAddress "127.0.0.1" 52415)
      (xpu.listenAddress "::" 80)
      (xpu.listenAddress "[::1]" 8080)
      (xpu.listenAddress "localhost" 1)
    ];
    expected = [
      "127.0.0.1:52415"
      "[::]:80"
      "[::1]:8080"
      "localhost:1"
    ];
  };
  testModelPathProblems = {
    expr = map (p: xpu.modelPathProblem p != null) [
      "/home/alice/models/x.gguf"
      "/root/x.gguf"
      "/tmp/x.gguf"
      "/var/tmp/m"
      "/var/lib/models/x.gguf"
      "/nix/store/abc-x.gguf"
      "/homework/x.gguf"
      "/tmpfs/x.gguf"
    ];
    expected = [
      true
      true
      true
      true
      false
      false
      false
      false
    ];
  };
  testLoopbackHosts = {
    expr = map xpu.isLoopbackHost [
      "127.0.0.1"
      "127.0.1.1"
      "::1"
      "localhost"
      "0.0.0.0"
      "::"
      "192.168.1.5"
    ];
    expected = [
      true
      true
      true
      true
      false
      false
      false
    ];
  };

  # --- facts files ------------------------------------------------------------------------
  testReadFactsJson = {
    expr = (fixture "cpu").recommendation.variant;
    expected = "exo-cpu";
  };
  testReadFactsNix = {
    expr = xpu.recommendedVariant (xpu.readFacts ./fixtures/facts-nvidia.nix);
    expected = "exo-cuda";
  };
  testReadFactsTruncatedThrows = {
    expr = fixture "truncated";
    expectedError = true;
  };
  testReadFactsTextFormatThrows = {
    expr = fixture "text-format";
    expectedError = true;
  };

  # --- source filter ----------------------------------------------------------------------
  testSourceFilter =
    let
      root = /src/xpu;
      keep = xpu.rustSourceFilterWith {
        inherit root;
        members = [
          "level-zero-sys"
          "probe"
          "probe/fake-ze-driver"
          "runner"
          "vulkan"
        ];
      };
    in
    {
      expr = map (p: keep "/src/xpu/${p}" "regular") [
        "Cargo.toml"
        "Cargo.lock"
        "probe/src/lib.rs"
        "runner/src/main.rs"
        "vulkan/src/lib.rs"
        "level-zero-sys/src/lib.rs"
        "target"
        "target-x/release/xpu-runner"
        "probe/target"
        "result"
        "result-1"
        ".git"
        "flake.nix"
        "modules/nixos/default.nix"
        "docs/nix.md"
        "runner/src/main.rs~"
      ];
      expected = [
        true
        true
        true
        true
        true
        true
        false
        false
        false
        false
        false
        false
        false
        false
        false
        false
      ];
    };
  # Every workspace member of the real Cargo.toml survives the filter of the real root.
  testSourceFilterKeepsEveryMember =
    let
      root = ../..;
      keep = xpu.rustSourceFilter root;
    in
    {
      expr = builtins.filter (m: !(keep "${toString root}/${m}/Cargo.toml" "regular")) (
        xpu.workspaceMembers ../../Cargo.toml
      );
      expected = [ ];
    };
  testSourceFilterDropsNixAndDocs =
    let
      root = ../..;
      keep = xpu.rustSourceFilter root;
    in
    {
      expr = map (p: keep "${toString root}/${p}" "regular") [
        "flake.nix"
        "docs/nix.md"
        "target/release/xpu-runner"
        "Cargo.lock"
      ];
      expected = [
        false
        false
        false
        true
      ];
    };
  testWorkspaceVersion = {
    expr = builtins.match "[0-9]+[.][0-9]+[.][0-9]+.*" (xpu.workspaceVersion ../../Cargo.toml) != null;
    expected = true;
  };
}
