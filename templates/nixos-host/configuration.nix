# `xpu` is this flake's input, passed by flake.nix (specialArgs).
{ pkgs, xpu, ... }:
{
  # Written by `xpu-probe -o facts.json` on this machine. It picks the variant (exo-intel,
  # exo-cuda or exo-cpu), the Intel compute runtime, kernel parameters and device access.
  hardware.xpu.factsFile = ./facts.json;
  # hardware.xpu.variant = "exo-cpu";   # overrides the probe's recommendation
  # hardware.xpu.media.enable = true;   # VA-API / oneVPL drivers as well

  services.xpu-runner = {
    enable = true;
    # model = "/var/lib/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf";  # default: SmolLM2-135M
    # A model pinned by hash, fetched at build time (a fixed-output derivation):
    # model = xpu.lib.fetchModel pkgs {
    #   repo = "OWNER/REPO-GGUF";
    #   file = "model-Q4_K_M.gguf";
    #   rev = "<commit>";          # a commit keeps the URL's content fixed
    #   hash = "sha256-...";       # the file's sha256, as the hub lists it, in SRI form
    # };
    # model = xpu.lib.fetchModel pkgs { url = "https://example.org/model.gguf"; hash = "sha256-..."; };
    # modelId = "llama-3.2-1b";
    # Several models in one service, each pinned by hash and loaded on its first request
    # (clients pick one by name in `model`); they replace `model` above:
    # models = {
    #   smollm2 = pkgs.xpu-default-model;
    #   llama = xpu.lib.fetchModel pkgs {
    #     repo = "OWNER/REPO-GGUF";
    #     file = "model-Q4_K_M.gguf";
    #     rev = "<commit>";
    #     hash = "sha256-...";
    #     tokenEnvVar = "HF_TOKEN";  # a gated file: the token comes from nix-daemon's environment
    #   };
    # };
    # maxLoadedModels = 1;     # unload the least recently used beyond this
    # memoryBudget = "8G";     # or bound the memory the loaded models take together
    # host = "0.0.0.0";
    # openFirewall = true;
    # apiKeyFile = "/run/secrets/xpu-runner-api-keys";  # one key per line
    # maxTokensDefault = 1024;  # for requests without max_tokens (runner default: 2048)
    # user = "xpu-runner"; group = "models";  # a fixed account, e.g. for a model only "models" may read
  };

  # For exo-cuda (NVIDIA): the driver and CUDA are unfree.
  # nixpkgs.config.allowUnfree = true;
  # services.xserver.videoDrivers = [ "nvidia" ];
  # hardware.nvidia.open = true;

  networking.hostName = "llm-host";
  system.stateVersion = "26.05";
}
