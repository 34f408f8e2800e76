# Tests of the NixOS and Home Manager modules with lib.evalModules, stub option declarations
# (tests/nix/stubs) and fake packages. They need nixpkgs' lib/ (NIXPKGS_LIB); see
# scripts/test-nix.sh. Shape: nix-unit tests, run by tests/nix/run-tests.nix.
{ lib }:
let
  fixture = name: ./fixtures + "/facts-${name}.json";

  evalNixos =
    {
      config ? { },
      pkgsArgs ? { },
      readOnlyPkgs ? false,
    }:
    (lib.evalModules {
      modules = [
        (import ./stubs/nixos-options.nix { inherit readOnlyPkgs; })
        ../../modules/nixos/default.nix
        { _module.args.pkgs = import ./stubs/pkgs.nix pkgsArgs; }
        config
      ];
    }).config;

  evalHome =
    config:
    (lib.evalModules {
      modules = [
        ./stubs/home-manager-options.nix
        ../../modules/home-manager/default.nix
        { _module.args.pkgs = import ./stubs/pkgs.nix { }; }
        config
      ];
    }).config;

  failedAssertions = cfg: map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
  anyMatches = regex: builtins.any (m: builtins.match regex m != null);
  hasSubstring = needle: haystack: builtins.match ".*${lib.escapeRegex needle}.*" haystack != null;

  withFacts =
    name: extra:
    lib.recursiveUpdate {
      hardware.xpu.factsFile = fixture name;
      services.xpu-runner.enable = true;
    } extra;

  intel = evalNixos { config = withFacts "intel-dgpu" { }; };
  intelUnit = intel.systemd.services.xpu-runner;
  runnerPath = "/nix/store/00000000000000000000000000000000-exo-intel-0.1.0/bin/xpu-runner";
  defaultModel = "/nix/store/00000000000000000000000000000000-SmolLM2-135M-Instruct.Q4_1.gguf";
  # The unit's XPU_RUNNER_* variables: how the module hands its options to the runner.
  runnerEnv = unit: lib.filterAttrs (n: _: lib.hasPrefix "XPU_RUNNER_" n) unit.environment;
  service = config: (evalNixos { inherit config; }).systemd.services.xpu-runner;
  intelNoDrivers = evalNixos {
    config = withFacts "intel-dgpu" { };
    pkgsArgs.withDriversOutput = false;
  };
  intelMedia = evalNixos { config = withFacts "intel-dgpu" { hardware.xpu.media.enable = true; }; };
  intelOldKernel = evalNixos {
    config = withFacts "intel-dgpu" { boot.kernelPackages.kernel.version = "6.1.119"; };
  };
  intelIgpu = evalNixos { config = withFacts "intel-igpu" { }; };

  nvidiaNoDriver = evalNixos { config = withFacts "nvidia" { }; };
  nvidia = evalNixos { config = withFacts "nvidia" { services.xserver.videoDrivers = [ "nvidia" ]; }; };
  nvidiaDatacenter = evalNixos { config = withFacts "nvidia" { hardware.nvidia.datacenter.enable = true; }; };
  nvidiaUnit = nvidia.systemd.services.xpu-runner;

  cpu = evalNixos { config = withFacts "cpu" { }; };
  cpuUnit = cpu.systemd.services.xpu-runner;
  noFacts = evalNixos { config.services.xpu-runner.enable = true; };
  notEnabled = evalNixos { };

  unknownSchema = evalNixos { config = withFacts "unknown-schema" { }; };
  badRecommendation = evalNixos { config = withFacts "bad-recommendation" { }; };

  hardeningKeys = [
    "CapabilityBoundingSet"
    "DynamicUser"
    "LockPersonality"
    "MemoryDenyWriteExecute"
    "NoNewPrivileges"
    "PrivateMounts"
    "PrivateTmp"
    "PrivateUsers"
    "ProcSubset"
    "ProtectClock"
    "ProtectControlGroups"
    "ProtectHome"
    "ProtectHostname"
    "ProtectKernelLogs"
    "ProtectKernelModules"
    "ProtectKernelTunables"
    "ProtectProc"
    "ProtectSystem"
    "RemoveIPC"
    "RestrictAddressFamilies"
    "RestrictNamespaces"
    "RestrictRealtime"
    "RestrictSUIDSGID"
    "SystemCallArchitectures"
    "SystemCallFilter"
    "UMask"
  ];
in
{
  # --- Intel dGPU (Arc B580 on xe, force_probe needed) --------------------------------------
  testIntelVariant = {
    expr = intel.hardware.xpu.variant;
    expected = "exo-intel";
  };
  testIntelNoFailedAssertions = {
    expr = failedAssertions intel;
    expected = [ ];
  };
  # The options reach the runner as XPU_RUNNER_* variables; the command line stays bare, so
  # that environmentVariables can replace any of them (see testPrecedence).
  testIntelPackage = {
    expr = {
      inherit (intelUnit.serviceConfig) ExecStart;
      env = runnerEnv intelUnit;
    };
    expected = {
      ExecStart = "${runnerPath} serve";
      env = {
        XPU_RUNNER_MODEL = defaultModel;
        XPU_RUNNER_MODEL_ID = "SmolLM2-135M-Instruct";
        XPU_RUNNER_HOST = "127.0.0.1";
        XPU_RUNNER_PORT = "52415";
        XPU_RUNNER_DEVICE = "vulkan";
        # The default --devices: the facts' discrete Intel GPU.
        XPU_RUNNER_DEVICES = "0000:03:00.0";
        XPU_RUNNER_FACTS = "${fixture "intel-dgpu"}";
        XPU_RUNNER_SHUTDOWN_TIMEOUT = "30";
        XPU_RUNNER_PARALLEL = "4";
        XPU_RUNNER_PREFILL_CHUNK = "512";
      };
    };
  };
  testIntelDeviceAccess = {
    expr = {
      inherit (intelUnit.serviceConfig)
        PrivateDevices
        DevicePolicy
        DeviceAllow
        SupplementaryGroups
        ProcSubset
        SystemCallFilter
        ;
    };
    expected = {
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [ "char-drm" ];
      SupplementaryGroups = [
        "render"
        "video"
      ];
      ProcSubset = "all";
      # @system-service already allows @resources; nothing is added, nothing denied.
      SystemCallFilter = [
        "@system-service"
        "~@privileged"
      ];
    };
  };
  testIntelGraphics = {
    expr = {
      inherit (intel.hardware.graphics) enable;
      extraPackages = map (p: p.name) intel.hardware.graphics.extraPackages;
    };
    expected = {
      enable = true;
      extraPackages = [
        "intel-compute-runtime-25.09"
        "intel-compute-runtime-25.09-drivers"
        "level-zero-1.28.0"
      ];
    };
  };
  testIntelWithoutDriversOutput = {
    expr = map (p: p.name) intelNoDrivers.hardware.graphics.extraPackages;
    expected = [
      "intel-compute-runtime-25.09"
      "level-zero-1.28.0"
    ];
  };
  testIntelMedia = {
    expr = map (p: p.name) intelMedia.hardware.graphics.extraPackages;
    expected = [
      "intel-compute-runtime-25.09"
      "intel-compute-runtime-25.09-drivers"
      "level-zero-1.28.0"
      "intel-media-driver-25.2"
      "vpl-gpu-rt-25.2"
    ];
  };
  testIntelFirmwareAndKernelParams = {
    expr = {
      firmware = intel.hardware.enableRedistributableFirmware;
      inherit (intel.boot) kernelParams;
    };
    expected = {
      firmware = true;
      kernelParams = [ "xe.force_probe=e20b" ];
    };
  };
  testIntelProbeWarningsSurface = {
    expr = anyMatches ".*xe.force_probe=e20b.*" intel.warnings;
    expected = true;
  };
  testIntelOldKernelAsserts = {
    expr = anyMatches ".*needs the xe kernel driver.*6[.]1[.]119.*linuxPackages_latest.*" (failedAssertions intelOldKernel);
    expected = true;
  };
  testIntelIgpuNoKernelParams = {
    expr = {
      inherit (intelIgpu.boot) kernelParams;
      failed = failedAssertions intelIgpu;
      groups = intelIgpu.systemd.services.xpu-runner.serviceConfig.SupplementaryGroups;
    };
    expected = {
      kernelParams = [ ];
      failed = [ ];
      groups = [ "render" ];
    };
  };
  testIntelVariantWithoutIntelGpuAsserts = {
    expr = anyMatches ".*lists no Intel GPU.*" (
      failedAssertions (
        evalNixos {
          config = withFacts "cpu" { hardware.xpu.variant = "exo-intel"; };
        }
      )
    );
    expected = true;
  };
  testOverlayApplied = {
    expr = map builtins.isFunction intel.nixpkgs.overlays;
    expected = [ true ];
  };
  # Under nixpkgs' readOnlyPkgs (and runNixOSTest) nixpkgs.overlays takes one definition only:
  # the module must not add one, and still find its packages.
  testReadOnlyPkgsLeavesOverlaysAlone = {
    expr =
      let
        c = evalNixos {
          config = withFacts "intel-dgpu" { };
          readOnlyPkgs = true;
        };
      in
      {
        overlays = c.nixpkgs.overlays;
        package = hasSubstring "-exo-intel-0.1.0/bin/xpu-runner" c.systemd.services.xpu-runner.serviceConfig.ExecStart;
      };
    expected = {
      overlays = [ ];
      package = true;
    };
  };

  # --- NVIDIA ------------------------------------------------------------------------------
  testNvidiaWithoutDriverAsserts = {
    expr = anyMatches ".*exo-cuda variant needs the NVIDIA driver.*videoDrivers.*" (failedAssertions nvidiaNoDriver);
    expected = true;
  };
  testNvidiaWithDriver = {
    expr = {
      variant = nvidia.hardware.xpu.variant;
      failed = failedAssertions nvidia;
      graphics = nvidia.hardware.graphics.enable;
      extraPackages = nvidia.hardware.graphics.extraPackages;
      kernelParams = nvidia.boot.kernelParams;
      firmware = nvidia.hardware.enableRedistributableFirmware;
    };
    expected = {
      variant = "exo-cuda";
      failed = [ ];
      graphics = true;
      extraPackages = [ ];
      kernelParams = [ ];
      firmware = false;
    };
  };
  testNvidiaDatacenterDriverCounts = {
    expr = failedAssertions nvidiaDatacenter;
    expected = [ ];
  };
  testNvidiaDeviceAccess = {
    expr = {
      inherit (nvidiaUnit.serviceConfig)
        PrivateDevices
        DevicePolicy
        DeviceAllow
        SupplementaryGroups
        ;
      device = nvidiaUnit.environment.XPU_RUNNER_DEVICE;
      package = hasSubstring "-exo-cuda-0.1.0/bin/xpu-runner" nvidiaUnit.serviceConfig.ExecStart;
    };
    expected = {
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [
        "char-nvidiactl"
        "char-nvidia-caps"
        "char-nvidia-frontend"
        "char-nvidia-uvm"
        "/dev/nvidia0 rw"
      ];
      SupplementaryGroups = [ ];
      device = "cuda";
      package = true;
    };
  };
  # The user overrides the probe: CPU on an NVIDIA host needs no NVIDIA driver.
  testVariantOverrideToCpu = {
    expr =
      let
        c = evalNixos { config = withFacts "nvidia" { hardware.xpu.variant = "exo-cpu"; }; };
      in
      {
        failed = failedAssertions c;
        private = c.systemd.services.xpu-runner.serviceConfig.PrivateDevices;
        hasDeviceAllow = c.systemd.services.xpu-runner.serviceConfig ? DeviceAllow;
      };
    expected = {
      failed = [ ];
      private = true;
      hasDeviceAllow = false;
    };
  };

  # --- CPU only ----------------------------------------------------------------------------
  testCpuUnit = {
    expr = {
      variant = cpu.hardware.xpu.variant;
      failed = failedAssertions cpu;
      private = cpuUnit.serviceConfig.PrivateDevices;
      hasDeviceAllow = cpuUnit.serviceConfig ? DeviceAllow;
      hasDevicePolicy = cpuUnit.serviceConfig ? DevicePolicy;
      procSubset = cpuUnit.serviceConfig.ProcSubset;
      graphics = cpu.hardware.graphics.enable;
      kernelParams = cpu.boot.kernelParams;
      device = cpuUnit.environment.XPU_RUNNER_DEVICE;
      inherit (cpuUnit.serviceConfig) SystemCallFilter SystemCallErrorNumber;
      firewall = cpu.networking.firewall.allowedTCPPorts;
    };
    expected = {
      variant = "exo-cpu";
      failed = [ ];
      private = true;
      hasDeviceAllow = false;
      hasDevicePolicy = false;
      procSubset = "all";
      graphics = false;
      kernelParams = [ ];
      device = "cpu";
      # The CPU build changes no priorities, affinities or NUMA policies: denied, with EPERM.
      SystemCallFilter = [
        "@system-service"
        "~@privileged"
        "~@resources"
      ];
      SystemCallErrorNumber = "EPERM";
      firewall = [ ];
    };
  };
  testCpuHardeningComplete = {
    expr = builtins.filter (k: !(cpuUnit.serviceConfig ? ${k})) hardeningKeys;
    expected = [ ];
  };
  testIntelHardeningComplete = {
    expr = builtins.filter (k: !(intelUnit.serviceConfig ? ${k})) hardeningKeys;
    expected = [ ];
  };
  testSystemdIntegration = {
    expr = {
      inherit (cpuUnit.serviceConfig)
        Type
        NotifyAccess
        WatchdogSec
        Restart
        DynamicUser
        StateDirectory
        CacheDirectory
        ProtectSystem
        NoNewPrivileges
        CapabilityBoundingSet
        ;
      inherit (cpuUnit) wantedBy;
    };
    expected = {
      Type = "notify";
      NotifyAccess = "main";
      WatchdogSec = "30";
      Restart = "on-failure";
      DynamicUser = true;
      StateDirectory = "xpu-runner";
      CacheDirectory = "xpu-runner";
      ProtectSystem = "strict";
      NoNewPrivileges = true;
      CapabilityBoundingSet = [ "" ];
      wantedBy = [ "multi-user.target" ];
    };
  };
  testNoFactsMeansCpu = {
    expr = {
      variant = noFacts.hardware.xpu.variant;
      failed = failedAssertions noFacts;
      facts = noFacts.systemd.services.xpu-runner.environment ? XPU_RUNNER_FACTS;
    };
    expected = {
      variant = "exo-cpu";
      failed = [ ];
      facts = false;
    };
  };
  # Facts alone (no service) set up the drivers, e.g. for other tools on the machine.
  testFactsWithoutServiceConfigureDrivers = {
    expr =
      let
        c = evalNixos { config.hardware.xpu.factsFile = fixture "intel-dgpu"; };
      in
      {
        inherit (c.hardware.graphics) enable;
        inherit (c.boot) kernelParams;
        services = builtins.attrNames c.systemd.services;
      };
    expected = {
      enable = true;
      kernelParams = [ "xe.force_probe=e20b" ];
      services = [ ];
    };
  };
  testImportOnlyChangesNothing = {
    expr = {
      services = notEnabled.systemd.services;
      graphics = notEnabled.hardware.graphics.enable;
      packages = notEnabled.environment.systemPackages;
      kernelParams = notEnabled.boot.kernelParams;
    };
    expected = {
      services = { };
      graphics = false;
      packages = [ ];
      kernelParams = [ ];
    };
  };

  # --- broken facts ------------------------------------------------------------------------
  testUnknownSchemaAsserts = {
    expr = anyMatches ".*hardware.xpu.factsFile.*schema_version 2, but this flake understands 1.*" (
      failedAssertions unknownSchema
    );
    expected = true;
  };
  testUnknownSchemaFallsBackToCpuSandbox = {
    expr = unknownSchema.systemd.services.xpu-runner.serviceConfig.PrivateDevices;
    expected = true;
  };
  testBadRecommendationAsserts = {
    expr = builtins.length (failedAssertions badRecommendation);
    expected = 4;
  };
  testBadRecommendationNoKernelParams = {
    expr = badRecommendation.boot.kernelParams;
    expected = [ ];
  };
  testTextFormatFactsFileFails = {
    expr = (evalNixos { config = withFacts "text-format" { }; }).hardware.xpu.variant;
    expectedError = true;
  };
  # A facts file in Nix form is read as such; the runner still gets JSON.
  testNixFactsFile = {
    expr =
      let
        c = evalNixos {
          config = {
            hardware.xpu.factsFile = ./fixtures/facts-nvidia.nix;
            hardware.nvidia.datacenter.enable = true;
            services.xpu-runner.enable = true;
          };
        };
      in
      {
        variant = c.hardware.xpu.variant;
        failed = failedAssertions c;
        facts = c.systemd.services.xpu-runner.environment.XPU_RUNNER_FACTS;
      };
    expected = {
      variant = "exo-cuda";
      failed = [ ];
      facts = "/nix/store/00000000000000000000000000000000-xpu-facts.json";
    };
  };
  testInlineFactsGoToRunner = {
    expr =
      let
        c = evalNixos {
          config = {
            hardware.xpu.facts = lib.importJSON (fixture "cpu");
            services.xpu-runner.enable = true;
          };
        };
      in
      c.systemd.services.xpu-runner.environment.XPU_RUNNER_FACTS;
    expected = "/nix/store/00000000000000000000000000000000-xpu-facts.json";
  };

  # --- service options ---------------------------------------------------------------------
  testPackageOverrideDrivesSandbox = {
    expr =
      let
        c = evalNixos {
          config = withFacts "intel-dgpu" { };
          pkgsArgs = { };
        };
        c2 = evalNixos {
          config = {
            imports = [ (withFacts "intel-dgpu" { }) ];
            services.xpu-runner.package = (import ./stubs/pkgs.nix { }).exo-cpu;
          };
        };
      in
      {
        before = c.systemd.services.xpu-runner.serviceConfig.PrivateDevices;
        after = c2.systemd.services.xpu-runner.serviceConfig.PrivateDevices;
        warned = anyMatches ".*\"cpu\" build but hardware.xpu.variant is \"exo-intel\".*" c2.warnings;
      };
    expected = {
      before = false;
      after = true;
      warned = true;
    };
  };
  testPackageWithoutAccelerationAsserts = {
    expr = anyMatches ".*has no passthru.acceleration.*" (
      failedAssertions (evalNixos {
        config = {
          services.xpu-runner.enable = true;
          services.xpu-runner.package = (import ./stubs/pkgs.nix { }).some-other-server;
        };
      })
    );
    expected = true;
  };
  testApiKeyThroughCredential =
    let
      c = evalNixos {
        config.services.xpu-runner = {
          enable = true;
          apiKeyFile = "/run/secrets/xpu keys";
          host = "0.0.0.0";
          openFirewall = true;
          port = 8000;
          modelId = "smollm2";
          environmentVariables.RUST_LOG = "debug";
        };
      };
      unit = c.systemd.services.xpu-runner;
    in
    {
      expr = {
        credential = unit.serviceConfig.LoadCredential;
        env = runnerEnv unit;
        firewall = c.networking.firewall.allowedTCPPorts;
        log = unit.environment.RUST_LOG;
        warnings = c.warnings;
        failed = failedAssertions c;
      };
      expected = {
        credential = [ "api-key:/run/secrets/xpu keys" ];
        # %d: systemd's credentials directory of the unit.
        env = {
          XPU_RUNNER_MODEL = "/nix/store/00000000000000000000000000000000-SmolLM2-135M-Instruct.Q4_1.gguf";
          XPU_RUNNER_MODEL_ID = "smollm2";
          XPU_RUNNER_HOST = "0.0.0.0";
          XPU_RUNNER_PORT = "8000";
          XPU_RUNNER_DEVICE = "cpu";
          XPU_RUNNER_API_KEY_FILE = "%d/api-key";
          XPU_RUNNER_SHUTDOWN_TIMEOUT = "30";
          XPU_RUNNER_PARALLEL = "4";
          XPU_RUNNER_PREFILL_CHUNK = "512";
        };
        firewall = [ 8000 ];
        log = "debug";
        warnings = [ ];
        failed = [ ];
      };
    };
  testModelInHomeAsserts = {
    expr = anyMatches ".*model [(]/home/alice/m.gguf[)] is under a home directory.*ProtectHome.*/var/lib/models.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          model = "/home/alice/m.gguf";
        };
      })
    );
    expected = true;
  };
  testApiKeyInStoreAsserts = {
    expr = anyMatches ".*apiKeyFile must be an absolute path outside the Nix store.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          apiKeyFile = "/nix/store/abc-keys";
        };
      })
    );
    expected = true;
  };
  testPublicWithoutKeyWarns = {
    expr =
      let
        c = evalNixos {
          config.services.xpu-runner = {
            enable = true;
            host = "0.0.0.0";
          };
        };
      in
      {
        warned = anyMatches ".*listens on 0.0.0.0 without services.xpu-runner.apiKeyFile.*" c.warnings;
        credential = c.systemd.services.xpu-runner.serviceConfig.LoadCredential;
      };
    expected = {
      warned = true;
      credential = [ ];
    };
  };
  # Definitions elsewhere in the configuration merge with the module's, as in NixOS.
  testUserDeviceAllowMerges = {
    expr =
      (evalNixos {
        config = {
          imports = [ (withFacts "intel-dgpu" { }) ];
          systemd.services.xpu-runner.serviceConfig.DeviceAllow = [ "char-accel" ];
        };
      }).systemd.services.xpu-runner.serviceConfig.DeviceAllow;
    expected = [
      "char-drm"
      "char-accel"
    ];
  };
  testSocketActivation = {
    expr =
      let
        c = evalNixos {
          config.services.xpu-runner = {
            enable = true;
            socketActivation = true;
            host = "::1";
            port = 8080;
          };
        };
      in
      {
        inherit (c.systemd.sockets.xpu-runner) listenStreams wantedBy;
        serviceWantedBy = c.systemd.services.xpu-runner.wantedBy;
        requires = c.systemd.services.xpu-runner.requires;
      };
    expected = {
      listenStreams = [ "[::1]:8080" ];
      wantedBy = [ "sockets.target" ];
      serviceWantedBy = [ ];
      requires = [ "xpu-runner.socket" ];
    };
  };
  testNoSocketByDefault = {
    expr = cpu.systemd.sockets;
    expected = { };
  };
  testShutdownTimeout = {
    expr =
      let
        unit =
          (evalNixos {
            config.services.xpu-runner = {
              enable = true;
              shutdownTimeoutSec = 120;
            };
          }).systemd.services.xpu-runner;
      in
      {
        inherit (unit.serviceConfig) TimeoutStopSec;
        env = unit.environment.XPU_RUNNER_SHUTDOWN_TIMEOUT;
      };
    expected = {
      TimeoutStopSec = "135s";
      env = "120";
    };
  };
  testWatchdogOff = {
    expr =
      (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          watchdogSec = 0;
        };
      }).systemd.services.xpu-runner.serviceConfig.WatchdogSec;
    expected = "0";
  };
  testBadVariantRejected = {
    expr = (evalNixos { config.hardware.xpu.variant = "exo-rocm"; }).hardware.xpu.variant;
    expectedError = true;
  };

  # --- runner settings, precedence -----------------------------------------------------------
  # Clients must name the default model by its package's passthru.modelId, not by the file
  # stem that carries the store hash.
  testDefaultModelIdFromPackage = {
    expr = {
      default = cpuUnit.environment.XPU_RUNNER_MODEL_ID;
      option = cpu.services.xpu-runner.modelId;
      plainFile =
        (service {
          services.xpu-runner = {
            enable = true;
            model = "/var/lib/models/m.gguf";
          };
        }).environment ? XPU_RUNNER_MODEL_ID;
      explicit =
        (service {
          services.xpu-runner = {
            enable = true;
            modelId = "tiny";
          };
        }).environment.XPU_RUNNER_MODEL_ID;
    };
    expected = {
      default = "SmolLM2-135M-Instruct";
      option = "SmolLM2-135M-Instruct";
      plainFile = false;
      explicit = "tiny";
    };
  };
  testTypedRunnerOptions = {
    expr = runnerEnv (service {
      services.xpu-runner = {
        enable = true;
        contextSize = 8192;
        threads = 6;
        maxQueue = 64;
        maxTokensDefault = 512;
        parallel = 8;
        kvCacheTokens = 16384;
        prefillChunk = 256;
      };
    });
    expected = {
      XPU_RUNNER_MODEL = defaultModel;
      XPU_RUNNER_MODEL_ID = "SmolLM2-135M-Instruct";
      XPU_RUNNER_HOST = "127.0.0.1";
      XPU_RUNNER_PORT = "52415";
      XPU_RUNNER_DEVICE = "cpu";
      XPU_RUNNER_SHUTDOWN_TIMEOUT = "30";
      XPU_RUNNER_PARALLEL = "8";
      XPU_RUNNER_KV_CACHE_TOKENS = "16384";
      XPU_RUNNER_PREFILL_CHUNK = "256";
      XPU_RUNNER_CTX = "8192";
      XPU_RUNNER_THREADS = "6";
      XPU_RUNNER_MAX_QUEUE = "64";
      XPU_RUNNER_MAX_TOKENS_DEFAULT = "512";
    };
  };
  # Batching settings are positive integers: 0 (or a negative) is refused at evaluation.
  testBatchingOptionsMustBePositive = {
    expr = map (
      settings:
      (builtins.tryEval (builtins.deepSeq (runnerEnv (service {
        services.xpu-runner = {
          enable = true;
        }
        // settings;
      })) true)).success
    ) [
      { parallel = 0; }
      { kvCacheTokens = 0; }
      { prefillChunk = -1; }
      { parallel = 1; kvCacheTokens = 1; prefillChunk = 1; }
    ];
    expected = [
      false
      false
      false
      true
    ];
  };
  # Several models pinned by the host: each an `ID=PATH` in the runner's --model list,
  # replacing `model` and `modelId`, with the limits beside them.
  testSeveralModels = {
    expr = runnerEnv (service {
      services.xpu-runner = {
        enable = true;
        models = {
          small = /nix/store/11111111111111111111111111111111-small.gguf;
          qwen = {
            outPath = "/nix/store/22222222222222222222222222222222-qwen-Q4_K_M.gguf";
          };
        };
        modelsDir = "/var/lib/models";
        maxLoadedModels = 2;
        memoryBudget = "8G";
      };
    });
    expected = {
      XPU_RUNNER_MODEL = "qwen=/nix/store/22222222222222222222222222222222-qwen-Q4_K_M.gguf,small=/nix/store/11111111111111111111111111111111-small.gguf";
      XPU_RUNNER_MODELS_DIR = "/var/lib/models";
      XPU_RUNNER_MAX_LOADED_MODELS = "2";
      XPU_RUNNER_MEMORY_BUDGET = "8G";
      XPU_RUNNER_HOST = "127.0.0.1";
      XPU_RUNNER_PORT = "52415";
      XPU_RUNNER_DEVICE = "cpu";
      XPU_RUNNER_SHUTDOWN_TIMEOUT = "30";
      XPU_RUNNER_PARALLEL = "4";
      XPU_RUNNER_PREFILL_CHUNK = "512";
    };
  };
  testSeveralModelsInHomeManager = {
    expr =
      builtins.filter (lib.hasPrefix ''"XPU_RUNNER_M'')
        (evalHome {
          services.xpu-runner = {
            enable = true;
            models.tiny = "/var/lib/models/tiny.gguf";
            memoryBudget = 4000000000;
          };
        }).systemd.user.services.xpu-runner.Service.Environment;
    expected = [
      ''"XPU_RUNNER_MEMORY_BUDGET=4000000000"''
      ''"XPU_RUNNER_MODEL=tiny=/var/lib/models/tiny.gguf"''
    ];
  };
  testSeveralModelsBadNameIsRefused = {
    expr =
      (builtins.tryEval (builtins.deepSeq (service {
        services.xpu-runner = {
          enable = true;
          models."a,b" = "/var/lib/models/a.gguf";
        };
      }).environment null)).success;
    expected = false;
  };
  testSeveralModelsInHomeAsserts = {
    expr = anyMatches ".*models[.]big [(]/home/alice/big.gguf[)] is under a home directory.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          models.big = "/home/alice/big.gguf";
        };
      })
    );
    expected = true;
  };
  testModelsDirInTmpAsserts = {
    expr = anyMatches ".*modelsDir [(]/tmp/models[)] is in /tmp.*PrivateTmp.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          modelsDir = "/tmp/models";
        };
      })
    );
    expected = true;
  };
  testMemoryBudgetIsASize = {
    expr =
      (builtins.tryEval (builtins.deepSeq (service {
        services.xpu-runner = {
          enable = true;
          memoryBudget = "lots";
        };
      }).environment null)).success;
    expected = false;
  };
  testTypedRunnerOptionsRejectZero = {
    expr =
      (service {
        services.xpu-runner = {
          enable = true;
          maxTokensDefault = 0;
        };
      }).environment;
    expectedError = true;
  };
  # One rule: options -> XPU_RUNNER_* variables; environmentVariables replace them; extraFlags
  # are on the command line, which the runner prefers to its environment.
  testPrecedence = {
    expr =
      let
        unit = service {
          services.xpu-runner = {
            enable = true;
            port = 8000;
            maxQueue = 4;
            environmentVariables = {
              XPU_RUNNER_PORT = "9000";
              RUST_LOG = "xpu_runner=debug";
            };
            extraFlags = [
              "--max-queue"
              "32"
              "--cors-allow-origin"
              "http://a b"
            ];
          };
        };
      in
      {
        inherit (unit.serviceConfig) ExecStart;
        port = unit.environment.XPU_RUNNER_PORT;
        queue = unit.environment.XPU_RUNNER_MAX_QUEUE;
        log = unit.environment.RUST_LOG;
      };
    expected = {
      ExecStart = ''/nix/store/00000000000000000000000000000000-exo-cpu-0.1.0/bin/xpu-runner serve "--max-queue" "32" "--cors-allow-origin" "http://a b"'';
      port = "9000";
      queue = "4";
      log = "xpu_runner=debug";
    };
  };
  # The old names still work, with a warning that names the new ones.
  testRenamedOptions = {
    expr =
      let
        c = evalNixos {
          config.services.xpu-runner = {
            enable = true;
            extraArgs = [ "--no-gpu-telemetry" ];
            environment.RUST_LOG = "info";
          };
        };
      in
      {
        inherit (c.systemd.services.xpu-runner.serviceConfig) ExecStart;
        log = c.systemd.services.xpu-runner.environment.RUST_LOG;
        warned = map (w: builtins.match ".*renamed to `services.xpu-runner.(extraFlags|environmentVariables)'.*" w != null) c.warnings;
      };
    expected = {
      ExecStart = ''/nix/store/00000000000000000000000000000000-exo-cpu-0.1.0/bin/xpu-runner serve "--no-gpu-telemetry"'';
      log = "info";
      warned = [
        true
        true
      ];
    };
  };

  # --- host --------------------------------------------------------------------------------
  # Host names and bracketed IPv6 are what the runner binds; loopback spellings count as
  # loopback (no API key warning), other names do not.
  testHostNamesAndBrackets = {
    expr =
      map
        (
          host:
          let
            c = evalNixos {
              config.services.xpu-runner = {
                enable = true;
                inherit host;
              };
            };
          in
          {
            env = c.systemd.services.xpu-runner.environment.XPU_RUNNER_HOST;
            warned = anyMatches ".*without services.xpu-runner.apiKeyFile.*" c.warnings;
            failed = failedAssertions c;
          }
        )
        [
          "localhost"
          "[::1]"
          "llm-host.lan"
        ];
    expected = [
      {
        env = "localhost";
        warned = false;
        failed = [ ];
      }
      {
        env = "[::1]";
        warned = false;
        failed = [ ];
      }
      {
        env = "llm-host.lan";
        warned = true;
        failed = [ ];
      }
    ];
  };
  # Not an address or name (a port, a URL, a space): refused by the option's type, whose
  # message (scripts/test-nix.sh checks it) says what to write.
  testBadHostsRejected = {
    expr = map (
      host:
      (builtins.tryEval
        (service {
          services.xpu-runner = {
            enable = true;
            inherit host;
          };
        }).environment.XPU_RUNNER_HOST
      ).success
    ) [
      "127.0.0.1:8080"
      "http://localhost"
      "local host"
      "127.1"
      ""
    ];
    expected = [
      false
      false
      false
      false
      false
    ];
  };
  testSocketActivationNeedsAddress = {
    expr = anyMatches ".*socketActivation needs an IP address.*\"localhost\".*host = \"127.0.0.1\";.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          socketActivation = true;
          host = "localhost";
        };
      })
    );
    expected = true;
  };

  # --- user and group ----------------------------------------------------------------------
  testDynamicUserByDefault = {
    expr = {
      inherit (cpuUnit.serviceConfig) DynamicUser;
      user = cpuUnit.serviceConfig ? User;
      group = cpuUnit.serviceConfig ? Group;
      users = cpu.users.users;
      groups = cpu.users.groups;
    };
    expected = {
      DynamicUser = true;
      user = false;
      group = false;
      users = { };
      groups = { };
    };
  };
  testStaticUserIsDeclared = {
    expr =
      let
        c = evalNixos {
          config.services.xpu-runner = {
            enable = true;
            user = "xpu-runner";
          };
        };
      in
      {
        inherit (c.systemd.services.xpu-runner.serviceConfig) DynamicUser User;
        group = c.systemd.services.xpu-runner.serviceConfig ? Group;
        inherit (c.users.users.xpu-runner) isSystemUser;
        primaryGroup = c.users.users.xpu-runner.group;
        groups = builtins.attrNames c.users.groups;
        failed = failedAssertions c;
      };
    expected = {
      DynamicUser = false;
      User = "xpu-runner";
      group = false;
      isSystemUser = true;
      primaryGroup = "xpu-runner";
      groups = [ "xpu-runner" ];
      failed = [ ];
    };
  };
  # A model readable only by the group "models": run as a user in that group.
  testStaticUserWithGroup = {
    expr =
      let
        c = evalNixos {
          config.services.xpu-runner = {
            enable = true;
            user = "llm";
            group = "models";
          };
        };
      in
      {
        inherit (c.systemd.services.xpu-runner.serviceConfig) DynamicUser User Group;
        primaryGroup = c.users.users.llm.group;
        groups = builtins.attrNames c.users.groups;
      };
    expected = {
      DynamicUser = false;
      User = "llm";
      Group = "models";
      primaryGroup = "models";
      groups = [ "models" ];
    };
  };
  # An existing normal account is used as it is (no isSystemUser/isNormalUser conflict, its
  # own primary group).
  testNormalUserKeptAsIs = {
    expr =
      let
        c = evalNixos {
          config = {
            users.users.alice.isNormalUser = true;
            services.xpu-runner = {
              enable = true;
              user = "alice";
            };
          };
        };
      in
      {
        inherit (c.users.users.alice) isSystemUser isNormalUser group;
        groups = builtins.attrNames c.users.groups;
        inherit (c.systemd.services.xpu-runner.serviceConfig) User DynamicUser;
      };
    expected = {
      isSystemUser = false;
      isNormalUser = true;
      group = "users";
      groups = [ ];
      User = "alice";
      DynamicUser = false;
    };
  };
  testGroupWithoutUserAsserts = {
    expr = anyMatches ".*group is \"models\" but services.xpu-runner.user is not set.*" (
      failedAssertions (evalNixos {
        config.services.xpu-runner = {
          enable = true;
          group = "models";
        };
      })
    );
    expected = true;
  };

  # --- Home Manager ------------------------------------------------------------------------
  testHomeManagerService =
    let
      c = evalHome {
        services.xpu-runner = {
          enable = true;
          factsFile = fixture "intel-dgpu";
          apiKeyFile = "/home/alice/.config/xpu/keys";
          maxTokensDefault = 1024;
          environmentVariables.RUST_LOG = "info";
        };
      };
      svc = c.systemd.user.services.xpu-runner;
    in
    {
      expr = {
        failed = failedAssertions c;
        type = svc.Service.Type;
        execStart = svc.Service.ExecStart;
        env = svc.Service.Environment;
        inherit (svc.Service) SystemCallFilter SystemCallErrorNumber;
        wantedBy = svc.Install.WantedBy;
        packages = map (p: p.name) c.home.packages;
      };
      expected = {
        failed = [ ];
        type = "notify";
        execStart = [ "${runnerPath} serve" ];
        env = [
          ''"RUST_LOG=info"''
          ''"XPU_RUNNER_API_KEY_FILE=/home/alice/.config/xpu/keys"''
          ''"XPU_RUNNER_DEVICE=vulkan"''
          ''"XPU_RUNNER_FACTS=${fixture "intel-dgpu"}"''
          ''"XPU_RUNNER_HOST=127.0.0.1"''
          ''"XPU_RUNNER_MAX_TOKENS_DEFAULT=1024"''
          ''"XPU_RUNNER_MODEL=${defaultModel}"''
          ''"XPU_RUNNER_MODEL_ID=SmolLM2-135M-Instruct"''
          ''"XPU_RUNNER_PARALLEL=4"''
          ''"XPU_RUNNER_PORT=52415"''
          ''"XPU_RUNNER_PREFILL_CHUNK=512"''
          ''"XPU_RUNNER_SHUTDOWN_TIMEOUT=30"''
        ];
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        wantedBy = [ "default.target" ];
        packages = [ "exo-intel-0.1.0" ];
      };
    };
  # Home Manager writes Environment= entries as given; unquoted, a value with spaces would
  # split (systemd keeps "A=x" and drops the rest). Each entry is one quoted word.
  testHomeManagerEnvironmentQuoting = {
    expr =
      builtins.filter (lib.hasPrefix ''"TRICKY'')
        (evalHome {
          services.xpu-runner = {
            enable = true;
            environmentVariables.TRICKY = ''two words "quoted" back\slash'';
          };
        }).systemd.user.services.xpu-runner.Service.Environment;
    expected = [ ''"TRICKY=two words \"quoted\" back\\slash"'' ];
  };
  testHomeManagerPrecedence = {
    expr =
      let
        svc =
          (evalHome {
            services.xpu-runner = {
              enable = true;
              port = 8000;
              environmentVariables.XPU_RUNNER_PORT = "9000";
              extraFlags = [
                "--port"
                "9100"
              ];
            };
          }).systemd.user.services.xpu-runner.Service;
      in
      {
        port = builtins.filter (lib.hasPrefix ''"XPU_RUNNER_PORT'') svc.Environment;
        inherit (svc) ExecStart SystemCallFilter;
      };
    expected = {
      port = [ ''"XPU_RUNNER_PORT=9000"'' ];
      ExecStart = [ ''/nix/store/00000000000000000000000000000000-exo-cpu-0.1.0/bin/xpu-runner serve "--port" "9100"'' ];
      SystemCallFilter = [
        "@system-service"
        "~@privileged"
        "~@resources"
      ];
    };
  };
  testHomeManagerRenamedOptions = {
    expr =
      let
        c = evalHome {
          services.xpu-runner = {
            enable = true;
            extraArgs = [ "--no-gpu-telemetry" ];
          };
        };
      in
      {
        inherit (c.systemd.user.services.xpu-runner.Service) ExecStart;
        warned = anyMatches ".*extraArgs.*renamed to `services.xpu-runner.extraFlags'.*" c.warnings;
      };
    expected = {
      ExecStart = [ ''/nix/store/00000000000000000000000000000000-exo-cpu-0.1.0/bin/xpu-runner serve "--no-gpu-telemetry"'' ];
      warned = true;
    };
  };
  testHomeManagerNixFactsAsJson = {
    expr = builtins.filter (lib.hasPrefix ''"XPU_RUNNER_FACTS'') (evalHome {
      services.xpu-runner = {
        enable = true;
        factsFile = ./fixtures/facts-nvidia.nix;
      };
    }).systemd.user.services.xpu-runner.Service.Environment;
    expected = [ ''"XPU_RUNNER_FACTS=/nix/store/00000000000000000000000000000000-xpu-facts.json"'' ];
  };
  # One declaration of the shared options, used by both modules.
  testSharedOptionsDeclaredOnce =
    let
      shared = [
        "enable"
        "model"
        "modelId"
        "host"
        "port"
        "device"
        "apiKeyFile"
        "contextSize"
        "threads"
        "maxQueue"
        "maxTokensDefault"
        "parallel"
        "kvCacheTokens"
        "prefillChunk"
        "shutdownTimeoutSec"
        "watchdogSec"
        "environmentVariables"
        "extraFlags"
      ];
      declarations =
        stubs: module:
        let
          options =
            (lib.evalModules {
              modules = [
                stubs
                module
                { _module.args.pkgs = import ./stubs/pkgs.nix { }; }
              ];
            }).options.services.xpu-runner;
        in
        map (name: map baseNameOf options.${name}.declarations) shared;
      oneFile = map (_: [ "runner-options.nix" ]) shared;
    in
    {
      expr = {
        nixos = declarations (import ./stubs/nixos-options.nix { }) ../../modules/nixos/default.nix;
        home = declarations ./stubs/home-manager-options.nix ../../modules/home-manager/default.nix;
      };
      expected = {
        nixos = oneFile;
        home = oneFile;
      };
    };
  testHomeManagerBrokenFacts = {
    expr = anyMatches ".*schema_version 2.*" (
      failedAssertions (evalHome {
        services.xpu-runner = {
          enable = true;
          factsFile = fixture "unknown-schema";
        };
      })
    );
    expected = true;
  };
  # The NixOS module refuses to be a Home Manager module, and the reverse.
  testModuleClasses = {
    expr =
      let
        nixosStubs = import ./stubs/nixos-options.nix { };
        homeStubs = ./stubs/home-manager-options.nix;
        # The stubs declare every option the module sets, so only the class can fail.
        evalAs =
          class: stubs: module:
          (builtins.tryEval (
            (lib.evalModules {
              inherit class;
              modules = [
                stubs
                module
                { _module.args.pkgs = import ./stubs/pkgs.nix { }; }
              ];
            }).config.assertions
          )).success;
      in
      {
        nixosAsNixos = evalAs "nixos" nixosStubs ../../modules/nixos/default.nix;
        nixosAsHome = evalAs "homeManager" nixosStubs ../../modules/nixos/default.nix;
        homeAsHome = evalAs "homeManager" homeStubs ../../modules/home-manager/default.nix;
        homeAsNixos = evalAs "nixos" homeStubs ../../modules/home-manager/default.nix;
      };
    expected = {
      nixosAsNixos = true;
      nixosAsHome = false;
      homeAsHome = true;
      homeAsNixos = false;
    };
  };
  testHomeManagerCpuDefault = {
    expr = (evalHome { services.xpu-runner.enable = true; }).services.xpu-runner.package.name;
    expected = "exo-cpu-0.1.0";
  };
}
