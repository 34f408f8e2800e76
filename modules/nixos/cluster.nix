# NixOS module `services.xpu-cluster`: one model served by several hosts through llama.cpp's RPC
# backend. Workers run llama.cpp's RPC server; the head runs `llama-server --rpc host:port,...`,
# which places layers on the workers and serves the OpenAI API. Imported by ./default.nix.
#
#   hardware.xpu.factsFile = ./facts.json;     # each host's own facts choose its llama.cpp build
#   services.xpu-cluster = { enable = true; role = "worker"; allowedPeers = [ "10.0.0.1" ]; };
#
# The decisions (package arguments, command lines, firewall rules, checks) live in
# ../../lib/cluster.nix; the sandbox and device rules are those of xpu-runner.service.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  xpu = import ../../lib;
  inherit (xpu) cluster;
  inherit (lib)
    literalExpression
    mkDefault
    mkIf
    mkMerge
    mkOption
    types
    ;

  hw = config.hardware.xpu;
  cfg = config.services.xpu-cluster;
  isWorker = cfg.role == "worker";
  isHead = cfg.role == "head";
  unit = "xpu-cluster-${cfg.role}";

  ourPackages = import ../../overlays/default.nix pkgs pkgs;
  defaultModel = pkgs.xpu-default-model or ourPackages.xpu-default-model;

  factsUsable = hw.facts != { } && xpu.factsErrors hw.facts == [ ];

  # nixpkgs before networking.firewall.backend chose the backend with networking.nftables.enable.
  firewallBackend =
    config.networking.firewall.backend or (if config.networking.nftables.enable then "nftables" else "iptables");

  nvidiaDriverConfigured =
    builtins.elem "nvidia" config.services.xserver.videoDrivers
    || (config.hardware.nvidia.datacenter.enable or false)
    || (config.hardware.nvidia.enable or false);

  headApiKeyArgs = lib.optionals (cfg.apiKeyFile != null) [
    "--api-key-file"
    "%d/api-key"
  ];

  execStart =
    if isWorker then
      cluster.execLine {
        program = "${cfg.package}/bin/${cfg.rpc.program}";
        args = cluster.workerArgs {
          inherit (cfg.rpc) listenAddress port cache;
          extraFlags = cfg.extraFlags;
        };
      }
    else
      cluster.execLine {
        program = "${cfg.package}/bin/llama-server";
        args = cluster.headArgs {
          inherit (cfg)
            model
            workers
            host
            port
            parallel
            gpuLayers
            extraFlags
            ;
        };
        rawArgs = headApiKeyArgs;
      };

  # Invalid peers and other backends (firewalld) get no rules; the assertions explain them.
  firewall =
    if builtins.elem firewallBackend [ "iptables" "nftables" ] then
      cluster.firewallRules {
        backend = firewallBackend;
        inherit (cfg.rpc) port;
        peers = lib.filter (p: cluster.peerProblem p == null) cfg.allowedPeers;
      }
    else
      {
        extraCommands = "";
        extraInputRules = "";
      };
in
{
  _class = "nixos";

  options.services.xpu-cluster = {
    enable = lib.mkEnableOption "this host's part in a llama.cpp RPC cluster (a worker, or the head that serves the OpenAI API)";

    role = mkOption {
      type = types.enum [
        "head"
        "worker"
      ];
      example = "worker";
      description = ''
        `worker`: run llama.cpp's RPC server (`${cluster.defaultRpcPort}` by default), which lends this host's GPU
        or CPU to the head. `head`: run `llama-server --rpc <workers>`, which loads the model, places its
        layers on the workers (and on a local GPU) and serves the OpenAI API.
      '';
    };

    acceleration = mkOption {
      type = types.enum xpu.accelerations;
      default = xpu.variantAcceleration hw.variant;
      defaultText = literalExpression "intel, cuda or cpu after config.hardware.xpu.variant (the facts' recommendation)";
      description = ''
        The llama.cpp backend of this host: `intel` builds llama.cpp with Vulkan, `cuda` with CUDA (unfree:
        needs `nixpkgs.config.allowUnfree = true` and the NVIDIA driver), `cpu` with neither. It also
        decides which devices the service may open.
      '';
    };

    package = mkOption {
      type = types.package;
      default = pkgs.llama-cpp.override (cluster.llamaCppOverrides cfg.acceleration);
      defaultText = literalExpression "pkgs.llama-cpp.override { rpcSupport = true; vulkanSupport/cudaSupport after acceleration; }";
      description = ''
        The llama.cpp package. It must be built with the RPC backend (`rpcSupport = true`) and install
        `llama-server` and, for workers, {option}`services.xpu-cluster.rpc.program`.
      '';
    };

    allowedPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.1" ];
      description = ''
        Workers: the IPv4 addresses or networks (`10.0.0.0/24`) that may connect to the RPC port; the
        module opens the port in the firewall for them only. The RPC server has no authentication, so list
        the head and nothing else. Required on workers.
      '';
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--ctx-size"
        "8192"
      ];
      description = "More arguments for `llama-server` (head) or the RPC server (worker), e.g. `--threads 8`.";
    };

    rpc = {
      port = mkOption {
        type = types.port;
        default = cluster.defaultRpcPort;
        description = "Workers: the TCP port of the RPC server.";
      };

      listenAddress = mkOption {
        type = types.str;
        default = "0.0.0.0";
        example = "10.0.0.2";
        description = ''
          Workers: the IPv4 address the RPC server binds (llama.cpp's RPC server takes no IPv6 or host
          names). The firewall admits only {option}`services.xpu-cluster.allowedPeers`; binding the cluster
          network's address narrows it further.
        '';
      };

      cache = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Workers: keep large tensors in a local cache (`--cache`, under /var/cache/xpu-cluster-worker), so a
          restarted head does not send the weights over the network again.
        '';
      };

      program = mkOption {
        type = types.str;
        default = "llama-rpc-server";
        example = "ggml-rpc-server";
        description = ''
          Workers: the RPC server's file name in `''${package}/bin`. nixpkgs' llama-cpp installs upstream's
          `rpc-server` as `llama-rpc-server`; upstream's own build names it `ggml-rpc-server`.
        '';
      };
    };

    workers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "10.0.0.2:50052"
        "10.0.0.3:50052"
      ];
      description = "Head: the workers' RPC servers as `host:port` (IPv4 address or host name), in the order llama.cpp should use them.";
    };

    model = mkOption {
      type = types.path;
      default = defaultModel;
      defaultText = literalExpression "pkgs.xpu-default-model";
      example = "/var/lib/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf";
      description = ''
        Head: the GGUF model (a path or a derivation). Only the head reads it; it sends the workers their
        layers when it starts. A path outside the store must be readable by any user and not under /home.
      '';
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = "Head: the address of the OpenAI API. Anything but loopback needs {option}`services.xpu-cluster.apiKeyFile`.";
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      description = "Head: the port of the OpenAI API (llama-server's default).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Head: whether to open {option}`services.xpu-cluster.port` in the firewall.";
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/xpu-cluster-api-keys";
      description = ''
        Head: a file with the accepted API keys, one per line, outside the Nix store; passed as a systemd
        credential (`--api-key-file %d/api-key`).
      '';
    };

    parallel = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 4;
      description = "Head: the number of request slots (`--parallel`); null keeps llama-server's default.";
    };

    gpuLayers = mkOption {
      type = types.ints.unsigned;
      default = 999;
      description = "Head: how many layers go to the devices, the workers and a local GPU (`--n-gpu-layers`); more than the model has means all.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      # The facts set up this host's drivers as for xpu-runner.
      hardware.xpu.enable = mkDefault true;

      assertions =
        map (message: {
          assertion = false;
          inherit message;
        }) (
          if isWorker then
            cluster.workerNetworkErrors {
              inherit (cfg) allowedPeers;
              inherit (cfg.rpc) listenAddress;
              firewallEnabled = config.networking.firewall.enable;
              backend = firewallBackend;
            }
          else
            cluster.headErrors { inherit (cfg) workers; }
        )
        ++ [
          {
            assertion = cfg.acceleration != "cuda" || nvidiaDriverConfigured;
            message = ''
              services.xpu-cluster.acceleration is "cuda" (llama.cpp with CUDA), and no NVIDIA driver is configured. Add:
                services.xserver.videoDrivers = [ "nvidia" ];   # also on headless machines
                hardware.nvidia.open = true;                    # Turing or newer; false for older GPUs
                nixpkgs.config.allowUnfree = true;              # the driver and CUDA are unfree
              or, on NVLink/NVSwitch servers, hardware.nvidia.datacenter.enable = true;
            '';
          }
          {
            assertion = !isHead || xpu.modelPathProblem cfg.model == null;
            message = ''
              services.xpu-cluster.model (${toString cfg.model}) ${toString (xpu.modelPathProblem cfg.model)}.
              Move the model to e.g. /var/lib/models (readable by all users), or use a path in the Nix store.
            '';
          }
          {
            assertion = !isHead || xpu.isLoopbackHost cfg.host || cfg.apiKeyFile != null;
            message = ''
              services.xpu-cluster.host is ${cfg.host}, and there is no services.xpu-cluster.apiKeyFile: anyone who can
              reach port ${toString cfg.port} could use the model. Set apiKeyFile (a file with one key per line, outside
              the Nix store), or keep host = "127.0.0.1".
            '';
          }
          {
            assertion = cfg.apiKeyFile == null || (lib.hasPrefix "/" cfg.apiKeyFile && !(lib.hasPrefix "/nix/store" cfg.apiKeyFile));
            message = ''
              services.xpu-cluster.apiKeyFile must be an absolute path outside the Nix store (the store is world-readable),
              e.g. "/run/secrets/xpu-cluster-api-keys"; it is "${toString cfg.apiKeyFile}".
            '';
          }
        ];

      warnings =
        lib.optional (isWorker && cfg.workers != [ ]) "services.xpu-cluster.workers is set on a worker; only the head reads it."
        ++ lib.optional (isHead && cfg.allowedPeers != [ ]) "services.xpu-cluster.allowedPeers is set on the head; only workers read it (the head's API is guarded by apiKeyFile)."
        ++ lib.optional (isHead && cfg.openFirewall && xpu.isLoopbackHost cfg.host) ''
          services.xpu-cluster.openFirewall is set, but the head only listens on ${cfg.host}; set services.xpu-cluster.host too.
        '';

      systemd.services.${unit} = {
        description =
          if isWorker then
            "llama.cpp RPC worker of the xpu cluster (${cfg.acceleration})"
          else
            "llama.cpp head of the xpu cluster, OpenAI API on ${cfg.host}:${toString cfg.port}";
        wantedBy = [ "multi-user.target" ];
        # The head connects to the workers when it starts; the workers serve remote peers.
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        environment = {
          HOME = "/var/cache/${unit}";
          # llama.cpp's cache directory (the worker's tensor cache, the head's downloads).
          LLAMA_CACHE = "/var/cache/${unit}";
        };

        serviceConfig =
          xpu.hardening cfg.acceleration
          // xpu.deviceAccess {
            inherit (cfg) acceleration;
            facts = if factsUsable then hw.facts else { };
          }
          // {
            # Neither program tells systemd when it is ready; both run until stopped.
            Type = "exec";
            ExecStart = execStart;
            # The head exits when a worker is unreachable at start; it retries until they are up.
            Restart = "on-failure";
            RestartSec = "10s";
            DynamicUser = true;
            CacheDirectory = unit;
            CacheDirectoryMode = "0700";
            WorkingDirectory = "/var/cache/${unit}";
            LoadCredential = lib.optional (isHead && cfg.apiKeyFile != null) "api-key:${cfg.apiKeyFile}";
          };
      };

      environment.systemPackages = [ cfg.package ];
    }

    (mkIf isWorker {
      networking.firewall.extraCommands = mkIf (firewall.extraCommands != "") firewall.extraCommands;
      networking.firewall.extraInputRules = mkIf (firewall.extraInputRules != "") firewall.extraInputRules;
    })

    (mkIf (isHead && cfg.openFirewall) {
      networking.firewall.allowedTCPPorts = [ cfg.port ];
    })
  ]);
}
