{ ... }:
{
  home.username = "alice"; # your user name
  home.homeDirectory = "/home/alice";
  home.stateVersion = "26.05";

  services.xpu-runner = {
    enable = true;
    # Written by `xpu-probe -o facts.json`; without it the CPU build runs.
    # factsFile = ./facts.json;
    # variant = "exo-intel";
    # model = "/home/alice/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf";
    # Several models, each loaded on its first request (clients pick one in `model`):
    # models = {
    #   llama = "/home/alice/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf";
    #   qwen = "/home/alice/models/qwen2.5-0.5b-instruct-q4_k_m.gguf";
    # };
    # maxLoadedModels = 1;
    # port = 52415;
  };
}
