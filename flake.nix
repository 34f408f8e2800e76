{
  description = "xpu: local LLM inference on Intel GPUs (and NVIDIA, CPU) as a hardened NixOS service";

  # nixpkgs is the only input, so offline evaluation can replace it with
  # `--override-input nixpkgs path:<stand-in>` (see scripts/test-nix.sh).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      xpuLib = import ./lib;
      systems = [ "x86_64-linux" ];
      # builtins only: the shape of the outputs does not depend on nixpkgs.
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );

      overlay = import ./overlays/default.nix;
      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ overlay ];
        };
      # Only for the exo-cuda output: the CUDA toolkit is unfree, and building this package
      # from the flake means accepting NVIDIA's licence. The overlay and the modules leave
      # that decision to the importing configuration (nixpkgs.config.allowUnfree).
      pkgsUnfreeFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ overlay ];
          config.allowUnfree = true;
        };
    in
    {
      lib = xpuLib;

      overlays.default = overlay;

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          probe = pkgs.xpu-probe;
          runner = pkgs.exo-cpu;
          exo-cpu = pkgs.exo-cpu;
          exo-intel = pkgs.exo-intel;
          exo-cuda = (pkgsUnfreeFor system).exo-cuda;
          default-model = pkgs.xpu-default-model;
          default = pkgs.exo-cpu;
        }
      );

      apps = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          apps = pkgs.callPackage ./packages/apps.nix { };
        in
        {
          runner = {
            type = "app";
            program = "${apps.runner}/bin/${apps.runner.meta.mainProgram}";
          };
          runner-intel = {
            type = "app";
            program = "${apps.runner-intel}/bin/${apps.runner-intel.meta.mainProgram}";
          };
          probe = {
            type = "app";
            program = pkgs.lib.getExe pkgs.xpu-probe;
          };
          default = self.apps.${system}.runner;
        }
      );

      nixosModules.default = import ./modules/nixos/default.nix;
      nixosModules.xpu = self.nixosModules.default;

      homeManagerModules.default = import ./modules/home-manager/default.nix;
      homeManagerModules.xpu = self.homeManagerModules.default;
      # The name newer Home Manager documentation uses.
      homeModules = self.homeManagerModules;

      devShells = forAllSystems (system: {
        default = (pkgsFor system).callPackage ./packages/dev-shell.nix { };
      });

      formatter = forAllSystems (system: (pkgsFor system).nixfmt-tree);

      templates = import ./templates;

      # Evaluated and built where nixpkgs and a binary cache are available (see docs/nix.md);
      # scripts/test-nix.sh runs the offline layers on machines without them.
      checks = forAllSystems (
        system:
        import ./checks {
          inherit self nixpkgs system;
          pkgs = pkgsFor system;
        }
      );
    };
}
