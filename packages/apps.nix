# Programs behind `nix run .#runner` / `.#runner-intel`: with no arguments they serve the
# default model on 127.0.0.1:52415; with arguments they are plain `xpu-runner`.
{
  lib,
  writeShellScriptBin,
  exo-cpu,
  exo-intel,
  xpu-default-model,
}:
let
  mkApp =
    name: runner:
    (writeShellScriptBin name ''
      if [ "$#" -eq 0 ]; then
        set -- serve \
          --model ${xpu-default-model} \
          --model-id ${lib.escapeShellArg xpu-default-model.modelId} \
          --host 127.0.0.1 \
          --port 52415
      fi
      exec ${lib.getExe runner} "$@"
    '').overrideAttrs
      (old: {
        meta = (old.meta or { }) // {
          mainProgram = name;
          description = "${runner.meta.description}; serves the default model when run without arguments";
        };
      });
in
{
  runner = mkApp "xpu-runner-default" exo-cpu;
  runner-intel = mkApp "xpu-runner-intel-default" exo-intel;
}
