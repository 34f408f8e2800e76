# Flake checks for machines with nixpkgs, a binary cache and KVM (`nix flake check`):
#   - package builds: probe, exo-cpu, exo-intel, exo-cuda, default-model;
#   - lib-tests / module-tests: the offline test sets, evaluated against real nixpkgs lib;
#   - nixos-exo-*: a NixOS system per variant, built from the fixture facts with the module;
#   - nixos-cluster-*: an Intel cluster worker and a CPU head, built the same way;
#   - vm-exo-cpu: a QEMU VM that serves the default model and answers a chat completion;
#   - vm-exo-intel: the Intel build in a VM without a GPU: drivers in place, CPU fallback, answers.
#   - cluster-lib-tests / cluster-module-tests: services.xpu-cluster's offline test sets;
#   - vm-cluster: a llama.cpp RPC head and two CPU workers (iptables and nftables firewalls)
#     serve the default model; only the head reaches the workers' RPC port.
# scripts/test-nix.sh runs the layers that need no nixpkgs on machines without it.
{
  self,
  nixpkgs,
  system,
  pkgs,
}:
let
  inherit (pkgs) lib;
  fixture = name: ../tests/nix/fixtures + "/facts-${name}.json";
  runTests = import ../tests/nix/run-tests.nix;

  # A check derivation that exists only when the evaluated test set has no failures.
  testSet =
    name: tests:
    let
      result = runTests tests;
    in
    if result.failures == [ ] then
      pkgs.runCommand name { } ''echo "${toString result.total} tests passed" > $out''
    else
      throw "${name}: ${toString (builtins.length result.failures)} failing tests: ${builtins.toJSON result.failures}";

  host =
    facts: extra:
    (nixpkgs.lib.nixosSystem {
      modules = [
        self.nixosModules.default
        {
          nixpkgs.hostPlatform = system;
          boot.loader.grub.enable = false;
          boot.loader.systemd-boot.enable = true;
          fileSystems."/" = {
            device = "/dev/disk/by-label/nixos";
            fsType = "ext4";
          };
          system.stateVersion = "26.05";
          hardware.xpu.factsFile = fixture facts;
          services.xpu-runner.enable = true;
        }
        extra
      ];
    }).config.system.build.toplevel;
in
{
  inherit (self.packages.${system})
    probe
    exo-cpu
    exo-intel
    exo-cuda
    default-model
    ;

  lib-tests = testSet "xpu-lib-tests" (import ../tests/nix/lib-tests.nix);
  module-tests = testSet "xpu-module-tests" (import ../tests/nix/module-tests.nix { inherit lib; });
  cluster-lib-tests = testSet "xpu-cluster-lib-tests" (import ../tests/nix/cluster-lib-tests.nix);
  cluster-module-tests = testSet "xpu-cluster-module-tests" (
    import ../tests/nix/cluster-module-tests.nix { inherit lib; }
  );

  nixos-exo-intel = host "intel-dgpu" { };
  nixos-exo-cuda = host "nvidia" {
    nixpkgs.config.allowUnfree = true;
    services.xserver.videoDrivers = [ "nvidia" ];
    hardware.nvidia.open = true;
  };
  nixos-exo-cpu = host "cpu" { };
  # services.xpu-cluster on its own: an Intel worker and a CPU head.
  nixos-cluster-worker-intel = host "intel-dgpu" {
    services.xpu-runner.enable = lib.mkForce false;
    services.xpu-cluster = {
      enable = true;
      role = "worker";
      allowedPeers = [ "10.0.0.1" ];
    };
  };
  nixos-cluster-head = host "cpu" {
    services.xpu-runner.enable = lib.mkForce false;
    services.xpu-cluster = {
      enable = true;
      role = "head";
      workers = [
        "10.0.0.2:50052"
        "10.0.0.3:50052"
      ];
    };
  };

  vm-exo-cpu = pkgs.testers.runNixOSTest (import ./vm-exo-cpu.nix { inherit self fixture; });
  vm-exo-intel = pkgs.testers.runNixOSTest (import ./vm-exo-intel.nix { inherit self fixture; });
  vm-cluster = pkgs.testers.runNixOSTest (import ./vm-cluster.nix { inherit self fixture; });
}
