# The flake's packages by name: from `pkgs` when the overlay is applied there, else built from
# the overlay here (under nixpkgs' readOnlyPkgs, or in Home Manager sharing the system's pkgs,
# a module cannot add overlays).
pkgs: name: pkgs.${name} or (import ../overlays/default.nix pkgs pkgs).${name}
