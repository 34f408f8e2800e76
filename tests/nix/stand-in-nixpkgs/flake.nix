# A stand-in for nixpkgs, so the xpu flake can be evaluated offline (Nix 2.8, no nixpkgs, no
# binary cache): `--override-input nixpkgs path:<assembled copy of this directory>`.
# scripts/test-nix.sh assembles it: this directory, nixpkgs' real lib/ (NIXPKGS_LIB) as ./lib
# and tests/nix/stubs as ./stubs. Packages are trivial local derivations carrying the
# arguments our package files pass; `lib.nixosSystem` evaluates the configuration with the stub
# NixOS options and fails on failed assertions. It proves the flake's wiring, not nixpkgs.
{
  outputs =
    { self }:
    {
      lib = import ./nixos-system.nix { standIn = self; };
      legacyPackages.x86_64-linux = import ./. { system = "x86_64-linux"; };
    };
}
