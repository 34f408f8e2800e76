# Stub declarations of the NixOS options the xpu module sets or reads, with the merge types of
# the real declarations (nixpkgs nixos/modules/...), so lib.evalModules can run the module
# without NixOS. This proves our logic against these stubs, not against NixOS itself; the
# flake's nixos-* checks evaluate the real thing where nixpkgs is available.
#
# `readOnlyPkgs = true` declares nixpkgs.overlays as nixpkgs' read-only.nix does (one
# definition only, the one that module makes itself).
#
# `firewallBackendOption = false` leaves out networking.firewall.backend, as in nixpkgs before it
# existed (the nftables firewall was chosen with networking.nftables.enable alone).
{
  readOnlyPkgs ? false,
  firewallBackendOption ? true,
}:
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  # nixos/lib/systemd-lib.nix `unitOption`: list definitions concatenate, others must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  # nixos/modules/misc/nixpkgs.nix `overlayType`.
  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };
  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
in
{
  config = lib.optionalAttrs readOnlyPkgs { nixpkgs.overlays = [ ]; };
  # recursiveUpdate: both sets declare options under `networking`.
  options = lib.recursiveUpdate (lib.optionalAttrs firewallBackendOption {
    # firewall.nix (newer nixpkgs)
    networking.firewall.backend = mkOption {
      type = types.enum [
        "iptables"
        "nftables"
        "firewalld"
      ];
      default = if config.networking.nftables.enable then "nftables" else "iptables";
    };
  }) {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    nixpkgs.overlays =
      if readOnlyPkgs then
        mkOption { type = types.unique { message = "nixpkgs.overlays is set to read-only"; } types.anything; }
      else
        mkOption {
          type = types.listOf overlayType;
          default = [ ];
        };

    # nixos/modules/system/boot/kernel.nix
    boot.kernelParams = mkOption {
      type = types.listOf (types.strMatching ''([^"[:space:]]|"[^"]*")+'');
      default = [ ];
    };
    boot.kernelPackages = mkOption {
      type = types.raw;
      default = {
        kernel.version = "6.12.8";
      };
    };

    # nixos/modules/hardware/graphics.nix
    hardware.graphics.enable = mkOption {
      type = types.bool;
      default = false;
    };
    hardware.graphics.extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    # nixos/modules/hardware/all-firmware.nix
    hardware.enableRedistributableFirmware = mkOption {
      type = types.bool;
      default = false;
    };
    # nixos/modules/hardware/video/nvidia.nix
    hardware.nvidia.datacenter.enable = mkOption {
      type = types.bool;
      default = false;
    };
    # nixos/modules/services/x11/xserver.nix
    services.xserver.videoDrivers = mkOption {
      type = types.listOf types.str;
      default = [
        "modesetting"
        "fbdev"
      ];
    };

    # nixos/modules/system/boot/systemd.nix (the parts a service uses here)
    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            description = mkOption {
              type = types.str;
              default = "";
            };
            documentation = listOfStr;
            wantedBy = listOfStr;
            requires = listOfStr;
            wants = listOfStr;
            after = listOfStr;
            environment = mkOption {
              type = types.attrsOf (
                types.nullOr (
                  types.oneOf [
                    types.str
                    types.path
                    types.package
                  ]
                )
              );
              default = { };
            };
            serviceConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
    };

    systemd.sockets = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            description = mkOption {
              type = types.str;
              default = "";
            };
            wantedBy = listOfStr;
            listenStreams = listOfStr;
            socketConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
    };

    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    # nixos/modules/services/networking/firewall.nix
    networking.firewall.enable = mkOption {
      type = types.bool;
      default = true;
    };
    # firewall-iptables.nix
    networking.firewall.extraCommands = mkOption {
      type = types.lines;
      default = "";
    };
    # firewall-nftables.nix
    networking.firewall.extraInputRules = mkOption {
      type = types.lines;
      default = "";
    };
    # nixos/modules/services/networking/nftables.nix
    networking.nftables.enable = mkOption {
      type = types.bool;
      default = false;
    };
    # nixos/modules/config/users-groups.nix (isNormalUser's mkDefault group, as there)
    users.users = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { config, ... }:
          {
            options = {
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              isNormalUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
            };
            config = lib.mkIf config.isNormalUser { group = lib.mkDefault "users"; };
          }
        )
      );
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
        }
      );
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
  };
}
