# A fake `pkgs` for module tests: derivation-shaped attribute sets (home-manager's stub
# approach), nothing is built. The runner variants carry passthru.acceleration like the real
# packages/runner.nix. `withDriversOutput` chooses between the intel-compute-runtime with a
# separate `drivers` output (nixpkgs before PR #560627) and the one without.
{
  withDriversOutput ? true,
}:
let
  fake =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
      meta = { };
    }
    // extra;
  runner =
    acceleration:
    let
      variant =
        {
          intel = "exo-intel";
          cuda = "exo-cuda";
          cpu = "exo-cpu";
        }
        .${acceleration};
    in
    fake "${variant}-0.1.0" {
      pname = variant;
      passthru = {
        inherit acceleration;
      };
      inherit acceleration;
      meta = {
        mainProgram = "xpu-runner";
        description = "fake ${variant}";
      };
    };
  icr = fake "intel-compute-runtime-25.09" (
    if withDriversOutput then { drivers = fake "intel-compute-runtime-25.09-drivers" { }; } else { }
  );
in
{
  exo-intel = runner "intel";
  exo-cuda = runner "cuda";
  exo-cpu = runner "cpu";
  xpu-probe = fake "xpu-probe-0.1.0" { meta.mainProgram = "xpu-probe"; };
  # As packages/default-model.nix: the id clients name is in passthru.
  xpu-default-model = fake "SmolLM2-135M-Instruct.Q4_1.gguf" {
    passthru.modelId = "SmolLM2-135M-Instruct";
  };
  intel-compute-runtime = icr;
  level-zero = fake "level-zero-1.28.0" { };
  intel-media-driver = fake "intel-media-driver-25.2" { };
  vpl-gpu-rt = fake "vpl-gpu-rt-25.2" { };
  # A package without the marker, as a user might pass.
  some-other-server = fake "some-other-server-1.0" { meta.mainProgram = "server"; };
  writeText = name: text: fake name { inherit text; };
  # nixpkgs' llama-cpp: `override` records the arguments in the name and in `overrideArgs`.
  llama-cpp = fake "llama-cpp-7000" {
    override =
      args:
      let
        on = builtins.filter (n: args.${n}) (builtins.attrNames args);
      in
      fake "llama-cpp-7000-${builtins.concatStringsSep "-" on}" { overrideArgs = args; };
  };
}
