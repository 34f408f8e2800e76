# NixOS module of xpu: hardware facts -> drivers, package variant and device permissions ->
# a hardened `xpu-runner.service`.
#
#   hardware.xpu.factsFile = ./facts.json;   # written by `xpu-probe -o facts.json`, committed
#   services.xpu-runner.enable = true;
#
# The decisions live in ../../lib (pure, unit-tested); this module only maps options to config.
# It applies the flake's overlay and takes packages from `pkgs` by name: exo-intel, exo-cuda,
# exo-cpu, xpu-probe, xpu-default-model.
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
  ourPackages = overlay pkgs pkgs;
  package = name: pkgs.${name} or ourPackages.${name};
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
  acceleration = if packageAccelerationValid then packageAcceleration else "cpu";

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

  apiKeyArg = if cfg.apiKeyFile != null then "%d/api-key" else null;
in
{
  # Importing this into Home Manager (or the reverse) fails with a clear message.
  _class = "nixos";

  # services.xpu-cluster: llama.cpp RPC workers and head, chosen from the same facts.
  imports = [ ./cluster.nix ];

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
    enable = lib.mkEnableOption "xpu-runner, the OpenAI-compatible local LLM inference service";

    package = mkOption {
      type = types.package;
      default = package hw.variant;
      defaultText = literalExpression "pkgs.\${config.hardware.xpu.variant}";
      description = ''
        The runner package. Its `passthru.acceleration` (`intel`, `cuda` or `cpu`) decides
        which devices the service may open.
      '';
    };

    model = mkOption {
      type = types.path;
      default = package "xpu-default-model";
      defaultText = literalExpression "pkgs.xpu-default-model";
      example = "/var/lib/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf";
      description = ''
        The model: a GGUF file or a Hugging Face safetensors directory. The default is
        SmolLM2-135M-Instruct (Q4_1). A path outside the Nix store must be readable by any
        user (the service runs with a dynamic user) and must not be under /home.
      '';
    };

    modelId = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "smollm2";
      description = "The model name clients use in requests; by default the runner derives it from the model file.";
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = "The address to listen on. Anything but loopback should come with an API key.";
    };

    port = mkOption {
      type = types.port;
      default = 52415;
      description = "The TCP port to listen on (52415 is the port EXO clients expect).";
    };

    device = mkOption {
      type = types.enum [
        "auto"
        "cpu"
        "cuda"
        "vulkan"
      ];
      default = xpu.runnerDevice acceleration;
      defaultText = "vulkan for exo-intel, cuda for exo-cuda, cpu for exo-cpu";
      description = ''
        The runner's `--device`. `auto` lets the runner decide from the facts and fall back to
        the CPU when the accelerator fails to start.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to open {option}`services.xpu-runner.port` in the firewall.";
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/xpu-runner-api-keys";
      description = ''
        A file with the accepted API keys, one per line, outside the Nix store. systemd passes
        it to the service as a credential (`LoadCredential`), so it can stay readable by root
        only.
      '';
    };

    shutdownTimeoutSec = mkOption {
      type = types.ints.positive;
      default = 30;
      description = ''
        How long in-flight requests may run on after SIGTERM (`--shutdown-timeout`); systemd's
        TimeoutStopSec= leaves 15 more seconds before it kills the runner.
      '';
    };

    socketActivation = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether systemd listens on {option}`services.xpu-runner.host`:{option}`services.xpu-runner.port`
        (`xpu-runner.socket`) and starts the runner on the first connection, handing it the
        socket. Connections made while the model loads wait instead of being refused.
      '';
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "systemd's WatchdogSec= for the service; the runner pings at half this interval. 0 turns it off.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--ctx"
        "8192"
        "--max-queue"
        "64"
      ];
      description = "More arguments for `xpu-runner serve`.";
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        RUST_LOG = "xpu_runner=debug";
      };
      description = "Environment variables of the service (the runner reads XPU_RUNNER_* options from here too).";
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
          assertion = xpu.modelPathProblem cfg.model == null;
          message = ''
            services.xpu-runner.model (${toString cfg.model}) ${toString (xpu.modelPathProblem cfg.model)}.
            Move the model to e.g. /var/lib/models (readable by all users), or use a path in the Nix store.
          '';
        }
        {
          assertion = cfg.apiKeyFile == null || (lib.hasPrefix "/" cfg.apiKeyFile && !(lib.hasPrefix "/nix/store" cfg.apiKeyFile));
          message = ''
            services.xpu-runner.apiKeyFile must be an absolute path outside the Nix store (the store is world-readable),
            e.g. "/run/secrets/xpu-runner-api-keys"; it is "${toString cfg.apiKeyFile}".
          '';
        }
      ];

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
        environment = {
          HOME = "/var/cache/xpu-runner";
          XDG_CACHE_HOME = "/var/cache/xpu-runner";
        }
        // cfg.environment;

        serviceConfig =
          xpu.hardening acceleration
          // xpu.deviceAccess {
            inherit acceleration;
            facts = if factsUsable then hw.facts else { };
          }
          // {
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${lib.getExe cfg.package} ${
              xpu.serveArgs {
                inherit (cfg)
                  model
                  modelId
                  host
                  port
                  device
                  ;
                extraArgs = [
                  "--shutdown-timeout"
                  (toString cfg.shutdownTimeoutSec)
                ]
                ++ cfg.extraArgs;
                factsFile = runnerFactsFile;
                inherit apiKeyArg;
              }
            }";
            Restart = "on-failure";
            RestartSec = "5s";
            # Large models take a while to map and upload; READY=1 comes once they are loaded.
            TimeoutStartSec = "15min";
            TimeoutStopSec = "${toString (cfg.shutdownTimeoutSec + 15)}s";
            WatchdogSec = toString cfg.watchdogSec;

            DynamicUser = true;
            StateDirectory = "xpu-runner";
            StateDirectoryMode = "0700";
            CacheDirectory = "xpu-runner";
            CacheDirectoryMode = "0700";
            WorkingDirectory = "/var/lib/xpu-runner";
            LoadCredential = lib.optional (cfg.apiKeyFile != null) "api-key:${cfg.apiKeyFile}";
          };
      };

      networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.port;

      environment.systemPackages = [ cfg.package ];
    })
  ];
}
