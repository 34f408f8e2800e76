# The options of `services.xpu-runner` that the NixOS and the Home Manager module share, declared
# once and imported by both. Each module adds what only it has (NixOS: `package`, `user`,
# `group`, `openFirewall`, `socketActivation`; Home Manager: `package`, `factsFile`, `variant`)
# and renders the unit its own way.
#
# Precedence, the same in both: the module passes these settings to the runner as XPU_RUNNER_*
# environment variables; `environmentVariables` replace them; `extraFlags` go on the command
# line and win over both (the runner's rule: command line > environment).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  xpu = import ../lib;
  inherit (lib) literalExpression mkOption types;
  cfg = config.services.xpu-runner;
  package = import ./package.nix pkgs;

  positiveOrNull =
    what: runnerDefault:
    mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "${what}; `null` keeps the runner's default (${runnerDefault}).";
    };

  hostType = types.addCheck types.str xpu.isHost // {
    name = "xpuRunnerHost";
    description = ''IP address or host name, e.g. "127.0.0.1", "::1", "0.0.0.0", "::" or "localhost" (no port: set services.xpu-runner.port)'';
  };
in
{
  imports = [
    (lib.mkRenamedOptionModule
      [ "services" "xpu-runner" "extraArgs" ]
      [ "services" "xpu-runner" "extraFlags" ]
    )
    (lib.mkRenamedOptionModule
      [ "services" "xpu-runner" "environment" ]
      [ "services" "xpu-runner" "environmentVariables" ]
    )
  ];

  options.services.xpu-runner = {
    enable = lib.mkEnableOption "xpu-runner, the OpenAI-compatible local LLM inference service";

    model = mkOption {
      type = types.path;
      default = package "xpu-default-model";
      defaultText = literalExpression "pkgs.xpu-default-model";
      example = "/var/lib/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf";
      description = ''
        The model: a GGUF file or a Hugging Face safetensors directory. The default is
        SmolLM2-135M-Instruct (Q4_1).
      '';
    };

    modelId = mkOption {
      type = types.nullOr types.str;
      default = xpu.modelIdOf cfg.model;
      defaultText = literalExpression "config.services.xpu-runner.model.passthru.modelId or null";
      example = "llama-3.2-1b";
      description = ''
        The model name that clients send in requests and see in /v1/models. By default the
        model package's `passthru.modelId` (`SmolLM2-135M-Instruct` for the default model); for
        a plain file, `null` lets the runner derive it from the file.
      '';
    };

    models = mkOption {
      type = types.attrsOf types.path;
      default = { };
      example = literalExpression ''
        {
          smollm2 = pkgs.xpu-default-model;
          qwen = xpu.lib.fetchModel pkgs {
            repo = "Qwen/Qwen2.5-0.5B-Instruct-GGUF";
            file = "qwen2.5-0.5b-instruct-q4_k_m.gguf";
            rev = "<commit>";
            hash = "sha256-...";
          };
        }
      '';
      description = ''
        Several models in one service: id (what clients send as `model`) to a GGUF file or
        safetensors directory, e.g. a model pinned by hash with `xpu.lib.fetchModel`. Each model
        loads on its first request; {option}`services.xpu-runner.maxLoadedModels` and
        {option}`services.xpu-runner.memoryBudget` bound how many stay loaded. When set, it
        replaces {option}`services.xpu-runner.model` and {option}`services.xpu-runner.modelId`.
      '';
    };

    modelsDir = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/models";
      description = ''
        Also serve every GGUF file under this directory (`--models-dir`, read at start), each
        named after its file and loaded on its first request.
      '';
    };

    maxLoadedModels = positiveOrNull "The most models kept loaded at once; loading one more unloads the least recently used, `--max-loaded-models`" "no limit";

    memoryBudget = mkOption {
      type = types.nullOr (
        types.either types.ints.positive (types.strMatching "[0-9]+([.][0-9]+)?[[:space:]]*([KkMmGgTt]([Ii]?[Bb])?|[Bb])?")
      );
      default = null;
      example = "8G";
      description = ''
        The memory that loaded models may take together (`--memory-budget`): bytes, or a number
        with K, M, G, T (1024s) or KB, MB, GB, TB (1000s). A model counts its weights plus its
        KV cache; loading one that does not fit first unloads the least recently used. `null`:
        no limit.
      '';
    };

    host = mkOption {
      type = hostType;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        The address to listen on: an IPv4 or IPv6 address (with or without brackets) or a host
        name such as `localhost`, which the runner resolves. Anything but loopback should come
        with {option}`services.xpu-runner.apiKeyFile`.
      '';
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
      default = xpu.runnerDevice (xpu.packageAcceleration cfg.package);
      defaultText = "vulkan for exo-intel, cuda for exo-cuda, cpu for exo-cpu";
      description = ''
        The runner's device. `auto` lets the runner decide from the facts and fall back to the
        CPU when the accelerator fails to start.
      '';
    };

    devices = mkOption {
      type = types.nullOr (
        types.either (types.enum [ "auto" ]) (types.nonEmptyListOf (types.either types.ints.unsigned types.str))
      );
      default = xpu.runnerDevices (xpu.packageAcceleration cfg.package) (config.hardware.xpu.facts or { });
      defaultText = "the PCI addresses of every compute-capable discrete GPU of the package's vendor in hardware.xpu.facts (NixOS); null without facts";
      example = [
        "0000:03:00.0"
        "0000:04:00.0"
      ];
      description = ''
        The GPUs the Vulkan engine runs on (`--devices`): `"auto"` (every discrete GPU) or
        adapter indices and PCI addresses as `xpu-probe` reports them. With several, the
        model's layers are split across them, in proportion to their memory; an integrated
        GPU joins only when named. `null` leaves the runner's `auto`.
      '';
    };

    apiKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/xpu-runner-api-keys";
      description = ''
        A file with the accepted API keys, one per line, outside the Nix store (which anyone
        can read). The NixOS service gets it as a systemd credential (`LoadCredential=`), so it
        can stay readable by root only.
      '';
    };

    contextSize = positiveOrNull "The context size in tokens (prompt plus generated), `--ctx`" "the model's own";

    threads = positiveOrNull "CPU threads for generation, `--threads`" "the engine's choice";

    maxQueue = positiveOrNull "Requests that may wait while one generates; more get 429, `--max-queue`" "16";

    maxTokensDefault = positiveOrNull ''
      The most tokens a request without `max_tokens` may generate, `--max-tokens-default`.
      Requests that set `max_tokens` are not limited by it''
      "2048";

    parallel = mkOption {
      type = types.ints.positive;
      default = 4;
      description = ''
        How many requests generate at the same time (`--parallel`): the KV cache holds this many
        sequences, and each step of the engine serves all of them at once. Engines that cannot
        batch serve one at a time. Requests beyond it wait in the queue
        ({option}`services.xpu-runner.maxQueue`).
      '';
    };

    kvCacheTokens = positiveOrNull ''
      The KV cache's total size in tokens, shared by the parallel sequences
      (`--kv-cache-tokens`): each then holds `min(contextSize, kvCacheTokens / parallel)`
      tokens''
      "each sequence holds the full context";

    prefillChunk = mkOption {
      type = types.ints.positive;
      default = 512;
      description = ''
        The most prompt tokens one step prefills (`--prefill-chunk`), so that a long prompt
        holds up the running streams for at most one chunk.
      '';
    };

    shutdownTimeoutSec = mkOption {
      type = types.ints.positive;
      default = 30;
      description = ''
        How long in-flight requests may run on after SIGTERM (`--shutdown-timeout`); the unit's
        TimeoutStopSec= leaves 15 more seconds before systemd kills the runner.
      '';
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 30;
      description = "systemd's WatchdogSec= for the service; the runner pings at half this interval. 0 turns it off.";
    };

    environmentVariables = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        RUST_LOG = "xpu_runner=debug";
        XPU_RUNNER_MAX_BODY_BYTES = "8388608";
      };
      description = ''
        Environment variables of the service. They replace the XPU_RUNNER_* variables that the
        module sets from its options (flags in {option}`services.xpu-runner.extraFlags` still win).
        systemd expands `%` specifiers in them: write `%%` for a literal `%`.
      '';
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--cors-allow-origin"
        "http://localhost:3000"
      ];
      description = ''
        More command line flags for `xpu-runner serve`. They win over the options and over
        {option}`services.xpu-runner.environmentVariables`.
      '';
    };
  };
}
