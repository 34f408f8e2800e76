# `nix flake init -t <xpu>#<name>` templates. Each is a self-contained flake whose `xpu` input
# points at this project; replace OWNER in its flake.nix with where you got xpu from (or use a
# path: / git+https: URL), then `nix flake lock`.
let
  loop = ''
    The loop is: **probe → commit the facts → rebuild.**

    1. On the target machine, run the probe and write the facts next to this flake:

           nix run <xpu>#probe -- -o facts.json

    2. Commit `facts.json` (flakes only see committed or tracked files): `git add facts.json`.
    3. Rebuild. The facts choose the variant (`exo-intel`, `exo-cuda` or `exo-cpu`), the drivers,
       the kernel parameters and the service's device permissions.

    Re-run the probe after changing GPUs or kernels. Override any choice with
    `hardware.xpu.variant`. Replace `OWNER` in `flake.nix` with the location of xpu.
  '';
in
rec {
  nixos-host = {
    path = ./nixos-host;
    description = "A NixOS host that serves local LLMs with xpu-runner, configured from probed hardware facts";
    welcomeText = ''
      # A NixOS host with xpu

      `facts.json` is a placeholder (a CPU-only machine); the build warns until you replace it.
      Merge `hardware-configuration.nix` with the one `nixos-generate-config` writes.

      ${loop}
      Then: `sudo nixos-rebuild switch --flake .#llm-host` and
      `curl http://127.0.0.1:52415/v1/models`.
    '';
  };
  default = nixos-host;

  home-manager = {
    path = ./home-manager;
    description = "xpu-runner as a Home Manager user service (any Linux with Nix)";
    welcomeText = ''
      # xpu-runner as a user service

      Set your user name in `flake.nix`, then `nix run home-manager/release-26.05 -- switch --flake .#me`.
      Drivers are a system matter: on NixOS use the `nixos-host` template for them.

      ${loop}
    '';
  };

  dev = {
    path = ./dev;
    description = "A development shell with xpu-runner, xpu-probe and the OpenAI Python client";
    welcomeText = ''
      # xpu development shell

      `nix develop`, then `xpu-runner serve --model "$XPU_DEFAULT_MODEL"` in one terminal and
      `python3 chat.py` in another. Replace `OWNER` in `flake.nix` with the location of xpu.
    '';
  };
}
