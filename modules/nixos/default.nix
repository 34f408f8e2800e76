# NixOS module of xpu: hardware facts -> drivers, package variant and device permissions ->
# a hardened `xpu-runner.service`.
#
#   hardware.xpu.factsFile = ./facts.json;   # written by `xpu-probe -o facts.json`, committed
#   services.xpu-runner.enable = true;
#
# The decisions live in ../../lib (pure, unit-tested); this module only maps options to config.
# The runner options it shares with the Home Manager module are declared in
# ../runner-options.nix. It applies the flake's overlay and takes packages from `pkgs` by name:
# exo-intel, exo-cuda, exo-cpu, xpu-probe, xpu-default-model.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  xpu = import ../../lib;

  overlay = import ../../overlays/default.nix;
  # nixpkgs' readOnlyPkgs module (also used by runNixOSTest) turns nixpkgs.overlays into a
  # single-definition option; there the given pkgs must already carry the overlay, or the
  # packages are built from it below.
  pkgsReadOnly = (options.nixpkgs.overlays.type.name or "") == "unique";
  package = import ../package.nix pkgs;
  inherit (lib)
    literalExpression
    mkDefault
    mkIf
    mkMerge
    mkOption
    types
    ;

  hw = config.hardware.xpu;
  cfg = config.services.xpu-runner;

  factsErrors = if hw.facts == { } then [ ] else xpu.factsErrors hw.facts;
  factsUsable = hw.facts != { } && factsErrors == [ ];
  factsName = if hw.factsFile != null then "hardware.xpu.factsFile (${toString hw.factsFile})" else "hardware.xpu.facts";

  variantAcceleration = xpu.variantAcceleration hw.variant;
  packageAcceleration = cfg.package.passthru.acceleration or null;
  packageAccelerationValid = builtins.elem packageAcceleration xpu.accelerations;
  # Device rules follow the package actually run, so a user who swaps the package keeps a
  # correct sandbox.
  acceleration = xpu.packageAcceleration cfg.package;

  # hardware.nvidia is enabled by the "nvidia" X11 driver or by the data-centre driver (and,
  # in newer nixpkgs, by hardware.nvidia.enable).
  nvidiaDriverConfigured =
    builtins.elem "nvidia" config.services.xserver.videoDrivers
    || (config.hardware.nvidia.datacenter.enable or false)
    || (config.hardware.nvidia.enable or false);
  cudaWanted = hw.variant == "exo-cuda" || (cfg.enable && acceleration == "cuda");

  intelGpusInFacts = xpu.gpusOf "intel" hw.facts;
  kernelVersion = config.boot.kernelPackages.kernel.version;
  needsXe = builtins.elem "xe" (xpu.intelRequiredDrivers hw.facts);

  probeWarnings =
    if factsUsable then
      map (w: "xpu-probe (${factsName}): ${w}") (
        (hw.facts.recommendation.warnings or [ ]) ++ (if builtins.isList (hw.facts.warnings or [ ]) then hw.facts.warnings or [ ] else [ ])
      )
    else
      [ ];

  intelComputePackages =
    [ pkgs.intel-compute-runtime ]
    # Before nixpkgs PR #560627 the Level Zero GPU driver (libze_intel_gpu.so) sits in a
    # separate `drivers` output that /run/opengl-driver does not get by itself.
    ++ lib.optional (pkgs.intel-compute-runtime ? drivers) pkgs.intel-compute-runtime.drivers
    ++ [ pkgs.level-zero ]
    ++ lib.optionals hw.media.enable [
      pkgs.intel-media-driver
      pkgs.vpl-gpu-rt
    ];

  # The runner reads the same facts to pick and describe its device.
  runnerFactsFile =
    if hw.factsFile != null && !(lib.hasSuffix ".nix" (toString hw.factsFile)) then
      hw.factsFile
    else if hw.facts != { } then
      pkgs.writeText "xpu-facts.json" (builtins.toJSON hw.facts)
    else
      null;

  staticUser = cfg.user != null;
  # An existing normal account (e.g. one whose files hold the model) is used as it is; any
  # other user is declared here as a system user.
  userIsNormal = staticUser && (config.users.users.${cfg.user}.isNormalUser or false);
  hostIsAddress = xpu.isIPv4 cfg.host || xpu.isIPv6 cfg.host;
in
{
  # Importing this into Home Manager (or the reverse) fails with a clear message.
  _class = "nixos";

  imports = [
    # The services.xpu-runner options shared with the Home Manager module.
    ../runner-options.nix
    # services.xpu-cluster: llama.cpp RPC workers and head, chosen from the same facts.
    ./cluster.nix
  ];

  options.hardware.xpu = {
    enable = mkOption {
      type = types.bool;
      default = hw.facts != { } || cfg.enable;
      defaultText = literalExpression "config.hardware.xpu.facts != { } || config.services.xpu-runner.enable";
      description = ''
        Whether to configure drivers, firmware and kernel parameters for
        {option}`hardware.xpu.variant`.
      '';
    };

    factsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./facts.json";
      description = ''
        The hardware facts of this machine: the JSON that `xpu-probe -o facts.json` writes (or
        its `--format nix` rendering). Commit it next to the configuration; flakes cannot read
        files outside themselves. Re-run the probe after changing hardware or kernel.
      '';
    };

    facts = mkOption {
      type = types.attrsOf types.anything;
      default = if hw.factsFile == null then { } else xpu.readFacts hw.factsFile;
      defaultText = literalExpression "the parsed hardware.xpu.factsFile, or { }";
      description = ''
        The parsed hardware facts. Set it directly instead of
        {option}`hardware.xpu.factsFile` to write facts inline.
      '';
    };

    variant = mkOption {
      type = types.enum xpu.variants;
      default = xpu.recommendedVariant hw.facts;
      defaultText = "hardware dependent: the facts' recommendation.variant, or exo-cpu without facts";
      description = ''
        The runner build for this machine: `exo-intel` (Vulkan engine for Intel GPUs, with the
        Intel compute runtime), `exo-cuda` (NVIDIA, unfree CUDA) or `exo-cpu`. Set it to
        override the probe's recommendation.
      '';
    };

    media.enable = lib.mkEnableOption ''
      the Intel media stack (intel-media-driver for VA-API, vpl-gpu-rt for oneVPL) next to the
      compute runtime. Inference does not need it
    '';
  };

  options.services.xpu-runner = {
    package = mkOption {
      type = types.package;
      default = package hw.variant;
      defaultText = literalExpression "pkgs.\${config.hardware.xpu.variant}";
      description = ''
        The runner package. Its `passthru.acceleration` (`intel`, `cuda` or `cpu`) decides
        which devices the service may open.
      '';
    };

    user = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "xpu-runner";
      description = ''
        The account the service runs as. `null` runs it as a transient user (`DynamicUser=`),
        which can read only world-readable files; name a user to serve a model that only it (or
        {option}`services.xpu-runner.group`) may read. A normal account (`isNormalUser`) is used
        as it is; any other name is declared as a system user.
      '';
    };

    group = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "models";
      description = ''
        The group the service runs as, with {option}`services.xpu-runner.user`. `null` keeps
        the user's primary group (for a user this module declares: a group of the same name).
        The group is declared if it does not exist.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open {option}`services.xpu-runner.port` (TCP) in the firewall.";
    };

    socketActivation = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether systemd listens on {option}`services.xpu-runner.host`:{option}`services.xpu-runner.port`
        (`xpu-runner.socket`) and starts the runner on the first connection, handing it the
        socket. Connections made while the model loads wait instead of being refused. The host
        must then be an IP address: systemd's ListenStream= resolves no names.
      '';
    };
  };

  config = mkMerge [
    {
      # Our packages under their names: pkgs.exo-intel, pkgs.exo-cuda, pkgs.exo-cpu,
      # pkgs.xpu-probe, pkgs.xpu-default-model. (With an externally built nixpkgs.pkgs, apply
      # the flake's overlays.default to it yourself.)
      nixpkgs.overlays = lib.mkIf (!pkgsReadOnly) [ overlay ];
    }

    (mkIf hw.enable {
      assertions =
        map (e: {
          assertion = false;
          message = "${factsName}: ${e}";
        }) factsErrors
        ++ [
          {
            assertion = !(hw.variant == "exo-intel" && factsUsable && intelGpusInFacts == [ ]);
            message = ''
              hardware.xpu.variant is "exo-intel", but ${factsName} lists no Intel GPU.
              Set hardware.xpu.variant = "exo-cpu" (or the variant the probe recommends), or re-run
              xpu-probe on the machine that has the Intel GPU and commit its facts.
            '';
          }
          {
            assertion = !(hw.variant == "exo-intel" && needsXe) || lib.versionAtLeast kernelVersion "6.8";
            message = ''
              The Intel GPU in ${factsName} needs the xe kernel driver, which Linux ${kernelVersion} does not have
              (xe arrived in 6.8). Set boot.kernelPackages = pkgs.linuxPackages_latest; (or any kernel >= 6.8).
            '';
          }
          {
            assertion = !cudaWanted || nvidiaDriverConfigured;
            message = ''
              The exo-cuda variant needs the NVIDIA driver, and none is configured. Add:
                services.xserver.videoDrivers = [ "nvidia" ];   # also on headless machines
                hardware.nvidia.open = true;                    # Turing or newer; false for older GPUs
                nixpkgs.config.allowUnfree = true;              # the driver and CUDA are unfree
              or, on NVLink/NVSwitch servers, hardware.nvidia.datacenter.enable = true;
              Or choose another variant with hardware.xpu.variant.
            '';
          }
        ];

      warnings = probeWarnings;

      hardware.graphics = mkIf (hw.variant != "exo-cpu") {
        enable = mkDefault true;
        extraPackages = mkIf (hw.variant == "exo-intel") intelComputePackages;
      };

      hardware.enableRedistributableFirmware = mkIf (hw.variant == "exo-intel") (mkDefault true);

      boot.kernelParams = xpu.kernelParams {
        inherit (hw) facts variant;
      };

      environment.systemPackages = [ (package "xpu-probe") ];
    })

    (mkIf cfg.enable {
      assertions = [
        {
          assertion = packageAccelerationValid;
          message = ''
            services.xpu-runner.package (${cfg.package.name or "?"}) has no passthru.acceleration of "intel", "cuda" or "cpu",
            so the service cannot tell which devices it may open. Use pkgs.exo-intel, pkgs.exo-cuda or pkgs.exo-cpu,
            or add passthru.acceleration to your package.
          '';
        }
        {
          # `models` replaces `model`.
          assertion = cfg.models != { } || xpu.modelPathProblem cfg.model == null;
          message = ''
            services.xpu-runner.model (${toString cfg.model}) ${toString (xpu.modelPathProblem cfg.model)}.
            Move the model to e.g. /var/lib/models, or use a path in the Nix store.
          '';
        }
        {
          assertion = cfg.apiKeyFile == null || (lib.hasPrefix "/" cfg.apiKeyFile && !(lib.hasPrefix "/nix/store" cfg.apiKeyFile));
          message = ''
            services.xpu-runner.apiKeyFile must be an absolute path outside the Nix store (the store is world-readable),
            e.g. "/run/secrets/xpu-runner-api-keys"; it is "${toString cfg.apiKeyFile}".
          '';
        }
        {
          assertion = !cfg.socketActivation || hostIsAddress;
          message = ''
            services.xpu-runner.socketActivation needs an IP address in services.xpu-runner.host, but it is "${cfg.host}":
            systemd's ListenStream= does not resolve host names. Write host = "127.0.0.1"; (or "::1") for localhost,
            or the address of the interface to listen on.
          '';
        }
        {
          assertion = cfg.group == null || staticUser;
          message = ''
            services.xpu-runner.group is "${toString cfg.group}" but services.xpu-runner.user is not set; the service
            would run as a transient user that ignores it. Set services.xpu-runner.user too (e.g. "xpu-runner").
          '';
        }
        {
          assertion = cfg.modelsDir == null || xpu.modelPathProblem cfg.modelsDir == null;
          message = ''
            services.xpu-runner.modelsDir (${toString cfg.modelsDir}) ${toString (xpu.modelPathProblem cfg.modelsDir)}.
            Move the models to e.g. /var/lib/models.
          '';
        }
      ]
      ++ map (name: {
        assertion = xpu.modelPathProblem cfg.models.${name} == null;
        message = ''
          services.xpu-runner.models.${name} (${toString cfg.models.${name}}) ${toString (xpu.modelPathProblem cfg.models.${name})}.
          Move the model to e.g. /var/lib/models, or use a path in the Nix store.
        '';
      }) (lib.attrNames cfg.models);

      warnings =
        lib.optional (packageAccelerationValid && packageAcceleration != variantAcceleration) ''
          services.xpu-runner.package is a "${packageAcceleration}" build but hardware.xpu.variant is "${hw.variant}";
          the service gets the devices of the package, the machine the drivers of the variant.
        ''
        ++ lib.optional (!(xpu.isLoopbackHost cfg.host) && cfg.apiKeyFile == null) ''
          services.xpu-runner listens on ${cfg.host} without services.xpu-runner.apiKeyFile: anyone who can reach
          port ${toString cfg.port} can use the model.
        ''
        ++ lib.optional (cfg.openFirewall && xpu.isLoopbackHost cfg.host) ''
          services.xpu-runner.openFirewall is set, but the runner only listens on ${cfg.host}; set services.xpu-runner.host too.
        '';

      # (optionalAttrs, not mkIf: the names are null when no user is set.)
      users.users = lib.optionalAttrs staticUser {
        ${cfg.user} = {
          isSystemUser = mkIf (!userIsNormal) true;
          group = mkIf (!userIsNormal) (mkDefault (if cfg.group != null then cfg.group else cfg.user));
        };
      };
      users.groups =
        lib.optionalAttrs (cfg.group != null) { ${cfg.group} = { }; }
        // lib.optionalAttrs (staticUser && cfg.group == null && !userIsNormal) { ${cfg.user} = { }; };

      systemd.sockets.xpu-runner = mkIf cfg.socketActivation {
        description = "Socket of xpu-runner";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ (xpu.listenAddress cfg.host cfg.port) ];
      };

      systemd.services.xpu-runner = {
        description = "xpu-runner, OpenAI-compatible LLM inference (${acceleration})";
        wantedBy = lib.optional (!cfg.socketActivation) "multi-user.target";
        requires = lib.optional cfg.socketActivation "xpu-runner.socket";
        wants = [ "network.target" ];
        after = [ "network.target" ];
        # The options reach the runner as XPU_RUNNER_* variables, so that
        # environmentVariables replace them and extraFlags (command line) win over both.
        environment = {
          HOME = "/var/cache/xpu-runner";
          XDG_CACHE_HOME = "/var/cache/xpu-runner";
        }
        // xpu.runnerEnvironment {
          inherit (cfg)
            model
            modelId
            models
            modelsDir
            maxLoadedModels
            memoryBudget
            host
            port
            device
            shutdownTimeoutSec
            contextSize
            threads
            maxQueue
            maxTokensDefault
            parallel
            kvCacheTokens
            prefillChunk
            devices
            ;
          factsFile = runnerFactsFile;
        }
        # The credential's path: %d is systemd's credentials directory.
        // lib.optionalAttrs (cfg.apiKeyFile != null) { XPU_RUNNER_API_KEY_FILE = "%d/api-key"; }
        // cfg.environmentVariables;

        serviceConfig =
          xpu.hardening acceleration
          // xpu.deviceAccess {
            inherit acceleration;
            facts = if factsUsable then hw.facts else { };
          }
          // {
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${lib.getExe cfg.package} serve${
              lib.optionalString (cfg.extraFlags != [ ]) " ${xpu.escapeSystemdExecArgs cfg.extraFlags}"
            }";
            Restart = "on-failure";
            RestartSec = "5s";
            # Large models take a while to map and upload; READY=1 comes once they are loaded.
            TimeoutStartSec = "15min";
            TimeoutStopSec = "${toString (cfg.shutdownTimeoutSec + 15)}s";
            WatchdogSec = toString cfg.watchdogSec;

            DynamicUser = !staticUser;
            StateDirectory = "xpu-runner";
            StateDirectoryMode = "0700";
            CacheDirectory = "xpu-runner";
            CacheDirectoryMode = "0700";
            WorkingDirectory = "/var/lib/xpu-runner";
            LoadCredential = lib.optional (cfg.apiKeyFile != null) "api-key:${cfg.apiKeyFile}";
          }
          // lib.optionalAttrs staticUser { User = cfg.user; }
          // lib.optionalAttrs (cfg.group != null) { Group = cfg.group; };
      };

      networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.port;

      environment.systemPackages = [ cfg.package ];
    })
  ];
}
