{
  description = "A NixOS host serving local LLMs with xpu";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # Where you took this template from, e.g. github:<owner>/xpu or git+https://…
    xpu.url = "github:OWNER/xpu";
    xpu.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, xpu, ... }:
    {
      nixosConfigurations.llm-host = nixpkgs.lib.nixosSystem {
        specialArgs = { inherit xpu; };
        modules = [
          xpu.nixosModules.default
          ./hardware-configuration.nix
          ./configuration.nix
        ];
      };
    };
}
