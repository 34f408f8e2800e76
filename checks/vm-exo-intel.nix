# NixOS VM test: the exo-intel variant in a VM without an Intel GPU. Like nixpkgs'
# ollama-vulkan test it proves the GPU build installs, starts and serves: with
# `device = "auto"` the runner falls back to the CPU and says so. It also checks what the
# module set up for Intel compute: the unit's device access, and the Level Zero GPU driver and
# the Vulkan ICDs under /run/opengl-driver.
{ self, fixture }:
{
  name = "xpu-runner-exo-intel";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    hardware.xpu.factsFile = fixture "intel-igpu";
    services.xpu-runner = {
      enable = true;
      device = "auto";
    };
    virtualisation.memorySize = 2048;
    virtualisation.cores = 2;
  };

  testScript = ''
    import json
    import shlex

    machine.wait_for_unit("xpu-runner.service")
    machine.wait_for_open_port(52415)

    unit = machine.succeed("systemctl cat xpu-runner.service")
    for directive in [
        "Type=notify",
        "DynamicUser=true",
        "ProtectSystem=strict",
        "PrivateDevices=false",
        "DevicePolicy=closed",
        "DeviceAllow=char-drm",
        "SupplementaryGroups=render",
        "SystemCallFilter=@system-service",
        "-exo-intel-",
        '"XPU_RUNNER_DEVICE=auto"',
    ]:
        assert directive in unit, f"{directive!r} missing from xpu-runner.service:\n{unit}"
    assert "char-nvidia" not in unit, unit
    # GPU runtimes keep what @system-service allows of @resources (priorities, affinity).
    assert "~@resources" not in unit, unit

    # hardware.graphics got the compute runtime, its Level Zero driver and the loader.
    machine.succeed("test -e /run/opengl-driver/lib/libze_intel_gpu.so.1")
    machine.succeed("test -e /run/opengl-driver/lib/libze_loader.so.1")
    machine.succeed("ls /run/opengl-driver/share/vulkan/icd.d/ | grep -q intel")
    machine.succeed("ls /run/opengl-driver/etc/OpenCL/vendors/ | grep -q intel")

    # No GPU in the VM: auto falls back to the CPU, and the service still answers.
    health = machine.succeed("curl -sf http://127.0.0.1:52415/health")
    print(health)
    assert "cpu" in health.lower(), health

    models = json.loads(machine.succeed("curl -sf http://127.0.0.1:52415/v1/models"))
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"], models

    request = json.dumps({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "temperature": 0,
    })
    reply = json.loads(machine.succeed(
        "curl -sf http://127.0.0.1:52415/v1/chat/completions"
        " -H 'Content-Type: application/json' -d " + shlex.quote(request)
    ))
    assert reply["choices"][0]["message"]["content"].strip(), reply
    assert reply["usage"]["completion_tokens"] > 0, reply
  '';
}
