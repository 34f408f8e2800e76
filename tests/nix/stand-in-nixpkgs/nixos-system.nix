# The stand-in's `lib`: nixpkgs' real lib plus a `nixosSystem` that evaluates the modules with
# the stub NixOS options (../stubs in the assembled copy) and the stand-in pkgs, and whose
# toplevel throws the failed assertions, as NixOS does.
{ standIn }:
let
  lib = import ./lib;
in
lib.extend (
  final: prev: {
    nixosSystem =
      {
        modules,
        specialArgs ? { },
        ...
      }:
      let
        eval = lib.evalModules {
          inherit specialArgs;
          modules = modules ++ [
            (import ./stubs/nixos-options.nix { })
            (
              { config, ... }:
              {
                options = {
                  nixpkgs.hostPlatform = lib.mkOption { type = lib.types.str; };
                  nixpkgs.config = lib.mkOption {
                    type = lib.types.attrsOf lib.types.anything;
                    default = { };
                  };
                  boot.loader.grub.enable = lib.mkOption {
                    type = lib.types.bool;
                    default = true;
                  };
                  boot.loader.systemd-boot.enable = lib.mkEnableOption "systemd-boot";
                  fileSystems = lib.mkOption {
                    type = lib.types.attrsOf (lib.types.attrsOf lib.types.str);
                    default = { };
                  };
                  system.stateVersion = lib.mkOption { type = lib.types.str; };
                  networking.hostName = lib.mkOption {
                    type = lib.types.str;
                    default = "nixos";
                  };
                  hardware.nvidia.open = lib.mkOption {
                    type = lib.types.nullOr lib.types.bool;
                    default = null;
                  };
                  system.build.toplevel = lib.mkOption { type = lib.types.package; };
                };
                config = {
                  _module.args.pkgs = import ./. {
                    system = config.nixpkgs.hostPlatform;
                    inherit (config.nixpkgs) overlays config;
                  };
                  system.build.toplevel =
                    let
                      failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
                    in
                    if failed != [ ] then
                      throw "Failed assertions:\n- ${lib.concatStringsSep "\n- " failed}"
                    else
                      # Forces the unit and the packages, like building the system would.
                      builtins.deepSeq (builtins.mapAttrs (_: s: s.serviceConfig) config.systemd.services) (
                        builtins.deepSeq (map (p: p.name) config.environment.systemPackages) (
                          standIn.legacyPackages.x86_64-linux.runCommand "nixos-system-${config.system.stateVersion}" { } ""
                        )
                      );
                };
              }
            )
          ];
        };
      in
      {
        inherit (eval) config options;
      };
  }
)
