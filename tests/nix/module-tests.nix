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
  testIntelPackage = {
    expr = intelUnit.serviceConfig.ExecStart;
    expected = ''/nix/store/00000000000000000000000000000000-exo-intel-0.1.0/bin/xpu-runner "serve" "--model" "/nix/store/00000000000000000000000000000000-SmolLM2-135M-Instruct.Q4_1.gguf" "--host" "127.0.0.1" "--port" "52415" "--device" "vulkan" "--facts" "${fixture "intel-dgpu"}" "--shutdown-timeout" "30"'';
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
      SystemCallFilter = [
        "@system-service @resources"
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
      device = hasSubstring ''"--device" "cuda"'' nvidiaUnit.serviceConfig.ExecStart;
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
      device = true;
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
      device = hasSubstring ''"--device" "cpu"'' cpuUnit.serviceConfig.ExecStart;
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
      device = true;
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
      facts = hasSubstring "--facts" noFacts.systemd.services.xpu-runner.serviceConfig.ExecStart;
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
        facts = hasSubstring ''"--facts" "/nix/store/00000000000000000000000000000000-xpu-facts.json"'' c.systemd.services.xpu-runner.serviceConfig.ExecStart;
      };
    expected = {
      variant = "exo-cuda";
      failed = [ ];
      facts = true;
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
      hasSubstring ''"--facts" "/nix/store/00000000000000000000000000000000-xpu-facts.json"'' c.systemd.services.xpu-runner.serviceConfig.ExecStart;
    expected = true;
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
          extraArgs = [
            "--max-queue"
            "8"
          ];
          environment.RUST_LOG = "debug";
        };
      };
      unit = c.systemd.services.xpu-runner;
    in
    {
      expr = {
        credential = unit.serviceConfig.LoadCredential;
        args = hasSubstring ''"--model-id" "smollm2" "--host" "0.0.0.0" "--port" "8000" "--device" "cpu" --api-key-file %d/api-key "--shutdown-timeout" "30" "--max-queue" "8"'' unit.serviceConfig.ExecStart;
        firewall = c.networking.firewall.allowedTCPPorts;
        log = unit.environment.RUST_LOG;
        warnings = c.warnings;
        failed = failedAssertions c;
      };
      expected = {
        credential = [ "api-key:/run/secrets/xpu keys" ];
        args = true;
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
        arg = hasSubstring ''"--shutdown-timeout" "120"'' unit.serviceConfig.ExecStart;
      };
    expected = {
      TimeoutStopSec = "135s";
      arg = true;
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

  # --- Home Manager ------------------------------------------------------------------------
  testHomeManagerService =
    let
      c = evalHome {
        services.xpu-runner = {
          enable = true;
          factsFile = fixture "intel-dgpu";
          apiKeyFile = "/home/alice/.config/xpu/keys";
          environment.RUST_LOG = "info";
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
        wantedBy = svc.Install.WantedBy;
        packages = map (p: p.name) c.home.packages;
      };
      expected = {
        failed = [ ];
        type = "notify";
        execStart = [
          ''/nix/store/00000000000000000000000000000000-exo-intel-0.1.0/bin/xpu-runner "serve" "--model" "/nix/store/00000000000000000000000000000000-SmolLM2-135M-Instruct.Q4_1.gguf" "--host" "127.0.0.1" "--port" "52415" "--device" "vulkan" "--facts" "${fixture "intel-dgpu"}" --api-key-file "/home/alice/.config/xpu/keys" "--shutdown-timeout" "30"''
        ];
        env = [ "RUST_LOG=info" ];
        wantedBy = [ "default.target" ];
        packages = [ "exo-intel-0.1.0" ];
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
