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
  package = import ../package.nix pkgs;

  facts = if cfg.factsFile == null then { } else xpu.readFacts cfg.factsFile;
  acceleration = cfg.package.passthru.acceleration or null;
  accelerationValid = builtins.elem acceleration xpu.accelerations;
  factsErrors = if facts == { } then [ ] else xpu.factsErrors facts;
in
{
  _class = "homeManager";

  # The options shared with the NixOS module (model, host, port, typed runner settings,
  # environmentVariables, extraFlags, ...). Not here: user/group (a user service runs as its
  # user), openFirewall and socketActivation (system matters).
  imports = [ ../runner-options.nix ];

  options.services.xpu-runner = {
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
          message = "services.xpu-runner.apiKeyFile must be an absolute path outside the Nix store (the store is world-readable), e.g. \"/home/alice/.config/xpu/api-keys\"; it is \"${toString cfg.apiKeyFile}\".";
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
        ExecStart = "${lib.getExe cfg.package} serve${
          lib.optionalString (cfg.extraFlags != [ ]) " ${xpu.escapeSystemdExecArgs cfg.extraFlags}"
        }";
        # Home Manager writes each entry as it is: quote them as NixOS does, so values with
        # spaces, quotes or backslashes arrive whole. The options reach the runner as
        # XPU_RUNNER_* variables, so environmentVariables replace them and extraFlags win.
        Environment = xpu.systemdEnvironment (
          xpu.runnerEnvironment {
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
              apiKeyFile
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
            # The runner reads JSON; facts written in Nix form are handed over as JSON.
            factsFile =
              if cfg.factsFile == null then
                null
              else if lib.hasSuffix ".nix" (toString cfg.factsFile) then
                pkgs.writeText "xpu-facts.json" (builtins.toJSON facts)
              else
                cfg.factsFile;
          }
          // cfg.environmentVariables
        );
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStartSec = "15min";
        TimeoutStopSec = "${toString (cfg.shutdownTimeoutSec + 15)}s";
        WatchdogSec = cfg.watchdogSec;
        # What a user manager can enforce without extra privileges.
        NoNewPrivileges = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallErrorNumber = "EPERM";
        SystemCallFilter = xpu.systemCallFilter (xpu.packageAcceleration cfg.package);
        UMask = "0077";
      };
      Install.WantedBy = [ "default.target" ];
    };
  };
}
