# Home Manager module of xpu: the same runner as a systemd user service, for machines where
# you do not manage the system (or do not want a system service). Drivers and kernel
# parameters are system matters; on NixOS use the NixOS module for them.
#
#   services.xpu-runner = { enable = true; factsFile = ./facts.json; };
{
  config,
  lib,
  pkgs,
  ...
}:
let
  xpu = import ../../lib;
  inherit (lib) literalExpression mkIf mkOption types;
  cfg = config.services.xpu-runner;

  # The flake's packages: from pkgs when the overlay is applied there, else built from it here
  # (Home Manager may share the system's pkgs, where it cannot add overlays).
  ourPackages = import ../../overlays/default.nix pkgs pkgs;
  package = name: pkgs.${name} or ourPackages.${name};

  facts = if cfg.factsFile == null then { } else xpu.readFacts cfg.factsFile;
  acceleration = cfg.package.passthru.acceleration or null;
  accelerationValid = builtins.elem acceleration xpu.accelerations;
  factsErrors = if facts == { } then [ ] else xpu.factsErrors facts;
in
{
  _class = "homeManager";

  options.services.xpu-runner = {
    enable = lib.mkEnableOption "xpu-runner, the OpenAI-compatible local LLM inference service, as a user service";

    factsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./facts.json";
      description = "The JSON that `xpu-probe -o facts.json` wrote on this machine; it picks the variant and is passed to the runner.";
    };

    variant = mkOption {
      type = types.enum xpu.variants;
      default = xpu.recommendedVariant facts;
      defaultText = "hardware dependent: the facts' recommendation.variant, or exo-cpu without facts";
      description = "The runner build: exo-intel, exo-cuda (unfree) or exo-cpu.";
    };

    package = mkOption {
      type = types.package;
      default = package cfg.variant;
      defaultText = literalExpression "pkgs.\${config.services.xpu-runner.variant}";
      description = "The runner package; it must carry passthru.acceleration.";
    };

    model = mkOption {
      type = types.path;
      default = package "xpu-default-model";
      defaultText = literalExpression "pkgs.xpu-default-model";
      description = "The model: a GGUF file or a safetensors directory. The default is SmolLM2-135M-Instruct (Q4_1).";
    };

    modelId = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The model name clients use; by default derived from the model file.";
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "The address to listen on.";
    };

    port = mkOption {
      type = types.port;
      default = 52415;
      description = "The TCP port to listen on.";
    };

    device = mkOption {
      type = types.enum [
        "auto"
        "cpu"
        "cuda"
        "vulkan"
      ];
      default = xpu.runnerDevice (if accelerationValid then acceleration else "cpu");
      defaultText = "vulkan for exo-intel, cuda for exo-cuda, cpu for exo-cpu";
      description = "The runner's `--device`.";
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/home/alice/.config/xpu/api-keys";
      description = "A file with the accepted API keys, one per line (outside the Nix store).";
    };

    shutdownTimeoutSec = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "How long in-flight requests may run on after SIGTERM (`--shutdown-timeout`).";
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "systemd's WatchdogSec= for the service; 0 turns it off.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More arguments for `xpu-runner serve`.";
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "Environment variables of the service.";
    };
  };

  config = mkIf cfg.enable {
    assertions =
      map (e: {
        assertion = false;
        message = "services.xpu-runner.factsFile: ${e}";
      }) factsErrors
      ++ [
        {
          assertion = accelerationValid;
          message = "services.xpu-runner.package has no passthru.acceleration of \"intel\", \"cuda\" or \"cpu\"; use pkgs.exo-intel, pkgs.exo-cuda or pkgs.exo-cpu.";
        }
        {
          assertion = cfg.apiKeyFile == null || (lib.hasPrefix "/" cfg.apiKeyFile && !(lib.hasPrefix "/nix/store" cfg.apiKeyFile));
          message = "services.xpu-runner.apiKeyFile must be an absolute path outside the Nix store.";
        }
      ];

    home.packages = [ cfg.package ];

    systemd.user.services.xpu-runner = {
      Unit = {
        Description = "xpu-runner, OpenAI-compatible LLM inference (${cfg.variant})";
        After = [ "network.target" ];
      };
      Service = {
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
            factsFile = if cfg.factsFile != null && !(lib.hasSuffix ".nix" (toString cfg.factsFile)) then cfg.factsFile else null;
            apiKeyArg = if cfg.apiKeyFile != null then xpu.escapeSystemdExecArg cfg.apiKeyFile else null;
          }
        }";
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStartSec = "15min";
        TimeoutStopSec = "${toString (cfg.shutdownTimeoutSec + 15)}s";
        WatchdogSec = cfg.watchdogSec;
        Environment = lib.mapAttrsToList (n: v: "${n}=${v}") cfg.environment;
        # What a user manager can enforce without extra privileges.
        NoNewPrivileges = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        UMask = "0077";
      };
      Install.WantedBy = [ "default.target" ];
    };
  };
}
