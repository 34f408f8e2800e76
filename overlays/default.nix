# The packages of this flake under the names the NixOS and Home Manager modules use.
# `exo-cuda` is unfree (CUDA toolkit): using it needs nixpkgs.config.allowUnfree (or an
# allowUnfreePredicate that admits the CUDA packages) in the importing nixpkgs.
final: prev: {
  xpu-probe = final.callPackage ../packages/probe.nix { };
  exo-cpu = final.callPackage ../packages/runner.nix { acceleration = "cpu"; };
  exo-intel = final.callPackage ../packages/runner.nix { acceleration = "intel"; };
  exo-cuda = final.callPackage ../packages/runner.nix { acceleration = "cuda"; };
  xpu-default-model = final.callPackage ../packages/default-model.nix { };
}
