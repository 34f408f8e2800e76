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
  # @system-service already contains @resources: the CPU build denies it, GPU builds keep
  # what @system-service allows, and no filter names @resources as an addition (a no-op).
  testHardeningCpuDeniesResourcesSyscalls = {
    expr = (xpu.hardening "cpu").SystemCallFilter;
    expected = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
  };
  testHardeningGpuKeepsResourcesSyscalls = {
    expr = map (a: (xpu.hardening a).SystemCallFilter) [
      "intel"
      "cuda"
    ];
    expected = [
      [
        "@system-service"
        "~@privileged"
      ]
      [
        "@system-service"
        "~@privileged"
      ]
    ];
  };
  testSystemCallFilterIsTheHardenings = {
    expr = map (a: xpu.systemCallFilter a == (xpu.hardening a).SystemCallFilter) xpu.accelerations;
    expected = [
      true
      true
      true
    ];
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
  # Settings go to the runner as XPU_RUNNER_* variables (so environmentVariables override
  # them); null settings are left out, `%` is escaped so values stay literal.
  testRunnerEnvironmentFull = {
    expr = xpu.runnerEnvironment {
      model = "/nix/store/x-model.gguf";
      modelId = "SmolLM2-135M-Instruct";
      host = "[::1]";
      port = 52415;
      device = "vulkan";
      factsFile = ./fixtures/facts-cpu.json;
      apiKeyFile = "/etc/xpu/100%keys";
      shutdownTimeoutSec = 30;
      contextSize = 8192;
      threads = 4;
      maxQueue = 64;
      maxTokensDefault = 2048;
      parallel = 8;
      kvCacheTokens = 16384;
      prefillChunk = 256;
    };
    expected = {
      XPU_RUNNER_MODEL = "/nix/store/x-model.gguf";
      XPU_RUNNER_MODEL_ID = "SmolLM2-135M-Instruct";
      XPU_RUNNER_HOST = "[::1]";
      XPU_RUNNER_PORT = "52415";
      XPU_RUNNER_DEVICE = "vulkan";
      XPU_RUNNER_FACTS = "${./fixtures/facts-cpu.json}";
      XPU_RUNNER_API_KEY_FILE = "/etc/xpu/100%%keys";
      XPU_RUNNER_SHUTDOWN_TIMEOUT = "30";
      XPU_RUNNER_CTX = "8192";
      XPU_RUNNER_THREADS = "4";
      XPU_RUNNER_MAX_QUEUE = "64";
      XPU_RUNNER_MAX_TOKENS_DEFAULT = "2048";
      XPU_RUNNER_PARALLEL = "8";
      XPU_RUNNER_KV_CACHE_TOKENS = "16384";
      XPU_RUNNER_PREFILL_CHUNK = "256";
    };
  };
  testRunnerEnvironmentMinimal = {
    expr = xpu.runnerEnvironment {
      model = {
        outPath = "/nix/store/y-model.gguf";
      };
      host = "localhost";
      port = 8080;
      device = "cpu";
    };
    expected = {
      XPU_RUNNER_MODEL = "/nix/store/y-model.gguf";
      XPU_RUNNER_HOST = "localhost";
      XPU_RUNNER_PORT = "8080";
      XPU_RUNNER_DEVICE = "cpu";
    };
  };
  # `devices` (the Vulkan engine's --devices): a list goes comma-separated, `auto` as is.
  testRunnerEnvironmentDevices = {
    expr = map (devices: (xpu.runnerEnvironment {
      model = "/m.gguf";
      host = "localhost";
      port = 1;
      device = "vulkan";
      inherit devices;
    }).XPU_RUNNER_DEVICES or null) [
      [
        "0000:03:00.0"
        1
      ]
      "auto"
      null
    ];
    expected = [
      "0000:03:00.0,1"
      "auto"
      null
    ];
  };
  # The default --devices from the facts: every compute-capable discrete GPU of the
  # package's vendor, by PCI address; none (the runner's auto) otherwise.
  testRunnerDevicesFromFacts =
    let
      facts = {
        gpus = [
          { vendor = "intel"; pci_address = "0000:04:00.0"; integrated = false; compute_capable = true; }
          { vendor = "intel"; pci_address = "0000:00:02.0"; integrated = true; compute_capable = true; }
          { vendor = "intel"; pci_address = "0000:03:00.0"; integrated = false; compute_capable = true; }
          { vendor = "other"; pci_address = "0000:05:00.0"; integrated = false; compute_capable = false; }
          { vendor = "nvidia"; pci_address = "0000:81:00.0"; integrated = false; compute_capable = true; }
        ];
      };
    in
    {
      expr = [
        (xpu.runnerDevices "intel" facts)
        (xpu.runnerDevices "cuda" facts)
        (xpu.runnerDevices "cpu" facts)
        (xpu.runnerDevices "intel" { gpus = [ (builtins.elemAt facts.gpus 1) ]; })
        (xpu.runnerDevices "intel" { })
      ];
      expected = [
        [
          "0000:03:00.0"
          "0000:04:00.0"
        ]
        [ "0000:81:00.0" ]
        null
        null
        null
      ];
    };
  # Several models replace `model` and `modelId` with one `ID=PATH` list (sorted by id).
  testRunnerEnvironmentSeveralModels = {
    expr = xpu.runnerEnvironment {
      model = "/nix/store/x-model.gguf";
      modelId = "ignored";
      models = {
        b = "/nix/store/b.gguf";
        "a.small:q4" = {
          outPath = "/nix/store/a.gguf";
        };
      };
      maxLoadedModels = 1;
      memoryBudget = "1.5GiB";
      host = "127.0.0.1";
      port = 1;
      device = "cpu";
    };
    expected = {
      XPU_RUNNER_MODEL = "a.small:q4=/nix/store/a.gguf,b=/nix/store/b.gguf";
      XPU_RUNNER_MAX_LOADED_MODELS = "1";
      XPU_RUNNER_MEMORY_BUDGET = "1.5GiB";
      XPU_RUNNER_HOST = "127.0.0.1";
      XPU_RUNNER_PORT = "1";
      XPU_RUNNER_DEVICE = "cpu";
    };
  };
  testModelListRefusesIdsThatCannotBeParsed = {
    expr = map (name: (builtins.tryEval (xpu.modelList { ${name} = "/m.gguf"; })).success) [
      "a=b"
      "a/b"
      "a b"
      "hf:x"
      ""
      "ok"
    ];
    expected = [
      false
      false
      false
      false
      false
      true
    ];
  };
  # Environment= lines as systemd reads them (systemd.syntax(5)): each assignment one
  # double-quoted word with C escapes, so spaces do not split it and quotes and backslashes
  # survive. scripts/test-nix.sh feeds these lines to systemd itself where it can.
  testSystemdEnvironmentQuoting = {
    expr = xpu.systemdEnvironment {
      RUST_LOG = "info";
      TRICKY = ''two words "quoted" back\slash $HOME'';
      PORT = 8080;
    };
    expected = [
      ''"PORT=8080"''
      ''"RUST_LOG=info"''
      ''"TRICKY=two words \"quoted\" back\\slash $HOME"''
    ];
  };
  testModelIdOf = {
    expr = map xpu.modelIdOf [
      {
        outPath = "/nix/store/abc-SmolLM2-135M-Instruct.Q4_1.gguf";
        passthru.modelId = "SmolLM2-135M-Instruct";
      }
      { outPath = "/nix/store/abc-other.gguf"; }
      "/var/lib/models/m.gguf"
      ./fixtures/facts-cpu.json
    ];
    expected = [
      "SmolLM2-135M-Instruct"
      null
      null
      null
    ];
  };
  testListenAddress = {
    expr = [
      (xpu.listenAddress "127.0.0.1" 52415)
      (xpu.listenAddress "::" 80)
      (xpu.listenAddress "[::1]" 8080)
      (xpu.listenAddress "fe80::1" 1)
    ];
    expected = [
      "127.0.0.1:52415"
      "[::]:80"
      "[::1]:8080"
      "[fe80::1]:1"
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
  # Loopback as the runner binds it; names that only look like loopback are not.
  testLoopbackHosts = {
    expr = map xpu.isLoopbackHost [
      "127.0.0.1"
      "127.0.1.1"
      "::1"
      "[::1]"
      "0:0:0:0:0:0:0:1"
      "localhost"
      "LOCALHOST"
      "0.0.0.0"
      "::"
      "[::]"
      "192.168.1.5"
      "127.evil.example"
      "localhost.example"
      "::ffff:127.0.0.1"
    ];
    expected = [
      true
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
    ];
  };
  # What services.xpu-runner.host accepts: what the runner can bind.
  testHostsAccepted = {
    expr = builtins.filter (h: !(xpu.isHost h)) [
      "127.0.0.1"
      "0.0.0.0"
      "255.255.255.255"
      "::"
      "::1"
      "[::1]"
      "[::]"
      "fe80::1"
      "2001:db8::ff00:42:8329"
      "::ffff:192.0.2.1"
      "1:2:3:4:5:6:7:8"
      "localhost"
      "llm-host"
      "llm-host.lan"
      "a.b-c.example"
    ];
    expected = [ ];
  };
  testHostsRefused = {
    expr = builtins.filter xpu.isHost [
      ""
      "256.0.0.1"
      "127.1"
      "010.0.0.1"
      "1.2.3.4.5"
      "127.0.0.1:8080"
      "[::1]:8080"
      "http://localhost"
      "local host"
      "-llm"
      "llm-"
      "a..b"
      "my_host"
      "1::2::3"
      "1:2:3:4:5:6:7:8:9"
      "12345::"
      "1.2.3.4::"
      "[::1"
      "fe80::1%eth0"
    ];
    expected = [ ];
  };
  testIpv6Groups = {
    expr = map xpu.ipv6Groups [
      "::1"
      "2001:db8::ff00:42:8329"
      "::ffff:1.2.3.4"
      "localhost"
    ];
    expected = [
      [ 0 0 0 0 0 0 0 1 ]
      [ 8193 3512 0 0 0 65280 66 33577 ]
      [ 0 0 0 0 0 65535 258 772 ]
      null
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

  # --- fetchModel ---------------------------------------------------------------------------
  testHubFileUrl = {
    expr = xpu.hubFileUrl {
      repo = "OWNER/REPO-GGUF";
      file = "sub/model-Q4_K_M.gguf";
      rev = "0123abc";
    };
    expected = "${xpu.defaultHubEndpoint}/OWNER/REPO-GGUF/resolve/0123abc/sub/model-Q4_K_M.gguf";
  };
  testHubFileUrlDefaultsAndMirror = {
    expr = [
      (xpu.hubFileUrl {
        repo = "o/r";
        file = "m.gguf";
      })
      (xpu.hubFileUrl {
        repo = "o/r";
        file = "m.gguf";
        rev = "refs/pr/1";
        endpoint = "http://mirror.local";
      })
    ];
    expected = [
      "${xpu.defaultHubEndpoint}/o/r/resolve/main/m.gguf"
      "http://mirror.local/o/r/resolve/refs%2Fpr%2F1/m.gguf"
    ];
  };
  # A fake fetchurl that returns its arguments shows what nixpkgs' fetchurl receives.
  testFetchModelFromRepo = {
    expr = xpu.fetchModel { fetchurl = args: args; } {
      repo = "o/r";
      file = "sub/m-Q4_1.gguf";
      rev = "v1";
      hash = "sha256-AAAA";
    };
    expected = {
      url = "${xpu.defaultHubEndpoint}/o/r/resolve/v1/sub/m-Q4_1.gguf";
      hash = "sha256-AAAA";
      name = "m-Q4_1.gguf";
      passthru.modelId = "m-Q4_1";
    };
  };
  testFetchModelFromUrl = {
    expr = xpu.fetchModel { fetchurl = args: args; } {
      url = "https://example.org/models/m.gguf?download=true";
      hash = "sha256-BBBB";
    };
    expected = {
      url = "https://example.org/models/m.gguf?download=true";
      hash = "sha256-BBBB";
      name = "m.gguf";
      passthru.modelId = "m";
    };
  };
  # A gated file: the token's variable name goes into the derivation, never the token.
  testFetchModelWithToken = {
    expr =
      let
        args = xpu.fetchModelArgs {
          repo = "o/r";
          file = "m.gguf";
          hash = "sha256-AAAA";
          tokenEnvVar = "HF_TOKEN";
        };
      in
      {
        inherit (args) netrcImpureEnvVars;
        readsVar = builtins.match ".*Bearer %s.*[$]HF_TOKEN.*" args.netrcPhase != null;
      };
    expected = {
      netrcImpureEnvVars = [ "HF_TOKEN" ];
      readsVar = true;
    };
  };
  testFetchModelTokenVarMustBeAName = {
    expr = xpu.fetchModelArgs {
      url = "https://example.org/m.gguf";
      hash = "sha256-AAAA";
      tokenEnvVar = "hf_abc def";
    };
    expectedError = true;
  };
  testFetchModelNeedsHash = {
    expr = xpu.fetchModelArgs { url = "https://example.org/m.gguf"; };
    expectedError = true;
  };
  testFetchModelNeedsUrlOrRepo = {
    expr = xpu.fetchModelArgs { hash = "sha256-AAAA"; };
    expectedError = true;
  };
  testFetchModelRejectsBothForms = {
    expr = (xpu.fetchModelArgs {
      url = "https://example.org/m.gguf";
      repo = "o/r";
      file = "m.gguf";
      hash = "sha256-AAAA";
    }).url;
    expectedError = true;
  };
  testFetchModelRejectsUnknownArguments = {
    expr = xpu.fetchModelArgs {
      url = "https://example.org/m.gguf";
      sha256 = "x";
      hash = "sha256-AAAA";
    };
    expectedError = true;
  };
  testHubFileUrlRejectsBadParts = {
    expr = map (args: (builtins.tryEval (xpu.hubFileUrl args)).success) [
      { repo = "o"; file = "m.gguf"; }
      { repo = "o/r/x"; file = "m.gguf"; }
      { repo = "o/.."; file = "m.gguf"; }
      { repo = "o/r"; file = "../m.gguf"; }
      { repo = "o/r"; file = "a//m.gguf"; }
      { repo = "o/r"; file = "m.gguf"; rev = ""; }
      { repo = "o/r"; file = "m.gguf"; rev = "a b"; }
      { repo = "o/r"; file = "m.gguf"; rev = "main"; }
    ];
    expected = [ false false false false false false false true ];
  };
}
