# NixOS VM test: the exo-cpu variant serves the default model (SmolLM2-135M) as a hardened
# systemd service and answers /v1/chat/completions. Like nixpkgs' llama-cpp test it also
# checks the sandbox in the text of `systemctl cat`.
{ self, fixture }:
{
  name = "xpu-runner-exo-cpu";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    hardware.xpu.factsFile = fixture "cpu";
    services.xpu-runner = {
      enable = true;
      # No modelId: the default model is served under its package's passthru.modelId.
      maxTokensDefault = 8;
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
        "WatchdogSec=30",
        "Restart=on-failure",
        "DynamicUser=true",
        "StateDirectory=xpu-runner",
        "CacheDirectory=xpu-runner",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "PrivateUsers=true",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=true",
        "RestrictAddressFamilies=AF_INET6",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@resources",
        "SystemCallErrorNumber=EPERM",
        "ProtectProc=invisible",
        "PrivateDevices=true",
        '"XPU_RUNNER_DEVICE=cpu"',
        '"XPU_RUNNER_MODEL_ID=SmolLM2-135M-Instruct"',
        '"XPU_RUNNER_FACTS=',
        '"XPU_RUNNER_MAX_TOKENS_DEFAULT=8"',
    ]:
        assert directive in unit, f"{directive!r} missing from xpu-runner.service:\n{unit}"
    assert "DeviceAllow" not in unit, f"the CPU variant must not allow devices:\n{unit}"
    assert "DevicePolicy" not in unit, unit

    health = machine.succeed("curl -sf http://127.0.0.1:52415/health")
    print(health)

    # The id clients must name: the model package's passthru.modelId, never the store file name.
    models = json.loads(machine.succeed("curl -sf http://127.0.0.1:52415/v1/models"))
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"], models

    request = json.dumps({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
    })
    reply = json.loads(machine.succeed(
        "curl -sf http://127.0.0.1:52415/v1/chat/completions"
        " -H 'Content-Type: application/json' -d " + shlex.quote(request)
    ))
    text = reply["choices"][0]["message"]["content"]
    print("answer:", text)
    assert text.strip(), reply
    assert reply["usage"]["completion_tokens"] > 0, reply
    assert reply["usage"]["prompt_tokens"] > 0, reply

    # A request without max_tokens stops at services.xpu-runner.maxTokensDefault.
    request = json.dumps({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
        "temperature": 0,
    })
    reply = json.loads(machine.succeed(
        "curl -sf http://127.0.0.1:52415/v1/chat/completions"
        " -H 'Content-Type: application/json' -d " + shlex.quote(request)
    ))
    assert 0 < reply["usage"]["completion_tokens"] <= 8, reply

    # The service runs as a dynamic user in its own /dev without GPU nodes.
    machine.succeed("systemctl show xpu-runner.service -p PrivateDevices | grep -qx PrivateDevices=yes")
    machine.succeed("systemctl show xpu-runner.service -p DynamicUser | grep -qx DynamicUser=yes")

    # The probe runs in the VM as well: a virtio guest has no compute GPU.
    facts = json.loads(machine.succeed("xpu-probe --format json --no-level-zero"))
    assert facts["schema_version"] == 1, facts
    assert facts["recommendation"]["variant"] == "exo-cpu", facts["recommendation"]

    # Graceful stop: systemd waits for the runner to drain and exit 0.
    machine.succeed("systemctl stop xpu-runner.service")
    machine.succeed("systemctl show xpu-runner.service -p Result | grep -qx Result=success")
  '';
}
