{
  description = "A shell with xpu-runner, xpu-probe and the OpenAI Python client";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # Where you took this template from, e.g. github:<owner>/xpu or git+https://…
    xpu.url = "github:OWNER/xpu";
    xpu.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, xpu, ... }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs {
        inherit system;
        overlays = [ xpu.overlays.default ];
      };
    in
    {
      devShells.${system}.default = pkgs.mkShell {
        packages = [
          pkgs.exo-cpu # or pkgs.exo-intel on an Intel GPU machine
          pkgs.xpu-probe
          (pkgs.python3.withPackages (ps: [ ps.openai ]))
        ];
        XPU_DEFAULT_MODEL = "${pkgs.xpu-default-model}";
      };
    };
}
