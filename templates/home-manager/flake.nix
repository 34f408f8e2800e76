{
  description = "xpu-runner as a Home Manager user service";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    home-manager.url = "github:nix-community/home-manager/release-26.05";
    home-manager.inputs.nixpkgs.follows = "nixpkgs";
    # Where you took this template from, e.g. github:<owner>/xpu or git+https://…
    xpu.url = "github:OWNER/xpu";
    xpu.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    {
      nixpkgs,
      home-manager,
      xpu,
      ...
    }:
    {
      homeConfigurations.me = home-manager.lib.homeManagerConfiguration {
        pkgs = nixpkgs.legacyPackages.x86_64-linux;
        modules = [
          xpu.homeManagerModules.default
          ./home.nix
        ];
      };
    };
}
