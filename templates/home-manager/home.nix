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
    # port = 52415;
  };
}
