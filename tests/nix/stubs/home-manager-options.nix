# Stub declarations of the Home Manager options the xpu module sets, with the types of
# home-manager's modules/systemd.nix (a freeform INI-like unit with typed Service.Environment
# and Service.ExecStart).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  primitive = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
  ];
  serviceType = types.attrsOf (
    types.submodule {
      freeformType = types.attrsOf (types.attrsOf (types.either primitive (types.listOf primitive)));
      options.Service.Environment = mkOption {
        type = types.coercedTo types.str lib.toList (types.listOf types.str);
        default = [ ];
      };
      options.Service.ExecStart = mkOption {
        type = types.either (types.either types.package types.str) (types.listOf (types.either types.package types.str));
        apply = lib.toList;
        default = [ ];
      };
    }
  );
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    home.packages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    systemd.user.services = mkOption {
      type = serviceType;
      default = { };
    };
  };
}
