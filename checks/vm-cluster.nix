# NixOS VM test of services.xpu-cluster: one head and two CPU workers serve the default model
# (SmolLM2-135M) through llama.cpp's RPC backend. worker1 uses the iptables firewall, worker2
# the nftables one; each admits only the head to its RPC port. The head's layers go to the
# workers (its log names them), and it answers /v1/chat/completions.
#
# tests/nix/cluster-module-tests.nix evaluates these node configurations against the stub NixOS
# options, and scripts/test-nix.sh compiles the test script, on machines without KVM.
{ self, fixture }:
let
  rpcPort = 50052;
  headAddress = nodes: nodes.head.networking.primaryIPAddress;
  worker =
    extra:
    { nodes, ... }:
    {
      services.xpu-cluster = {
        enable = true;
        role = "worker";
        allowedPeers = [ (headAddress nodes) ];
      };
    }
    // extra;
in
{
  name = "xpu-cluster";

  defaults = {
    imports = [ self.nixosModules.default ];
    hardware.xpu.factsFile = fixture "cpu";
    virtualisation.memorySize = 1536;
    virtualisation.cores = 2;
  };

  nodes = {
    head =
      { nodes, ... }:
      {
        services.xpu-cluster = {
          enable = true;
          role = "head";
          workers = map (n: "${nodes.${n}.networking.primaryIPAddress}:${toString rpcPort}") [
            "worker1"
            "worker2"
          ];
          parallel = 1;
          # llama.cpp logs where the weights went ("RPC0[host:port] model buffer size") at 4.
          extraFlags = [
            "--log-verbosity"
            "4"
          ];
        };
      };
    worker1 = worker { };
    worker2 = worker { networking.nftables.enable = true; };
  };

  testScript = ''
    import json
    import re
    import shlex

    start_all()

    for worker in (worker1, worker2):
        worker.wait_for_unit("xpu-cluster-worker.service")
        worker.wait_for_open_port(${toString rpcPort})

    head.wait_for_unit("xpu-cluster-head.service")
    # The head restarts until both workers answer; /health is 200 once the model is loaded.
    head.wait_until_succeeds("curl -sf http://127.0.0.1:8080/health", timeout=900)

    unit = worker1.succeed("systemctl cat xpu-cluster-worker.service")
    for directive in [
        "Type=exec",
        "Restart=on-failure",
        "DynamicUser=true",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "PrivateUsers=true",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=true",
        "SystemCallFilter=~@privileged",
        "PrivateDevices=true",
        '"--host" "0.0.0.0" "--port" "${toString rpcPort}"',
    ]:
        assert directive in unit, f"{directive!r} missing from xpu-cluster-worker.service:\n{unit}"
    assert "DeviceAllow" not in unit, f"a CPU worker must not allow devices:\n{unit}"

    # runNixOSTest numbers the nodes in name order: head .1, worker1 .2, worker2 .3.
    head_unit = head.succeed("systemctl cat xpu-cluster-head.service")
    assert '"--rpc" "192.168.1.2:${toString rpcPort},192.168.1.3:${toString rpcPort}"' in head_unit, head_unit
    assert '"--host" "127.0.0.1"' in head_unit, head_unit

    request = json.dumps({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0,
    })
    reply = json.loads(head.succeed(
        "curl -sf http://127.0.0.1:8080/v1/chat/completions"
        " -H 'Content-Type: application/json' -d " + shlex.quote(request)
    ))
    text = reply["choices"][0]["message"]["content"]
    print("answer:", text)
    assert text.strip(), reply
    assert reply["usage"]["completion_tokens"] > 0, reply

    # The weights went to the workers: llama.cpp names each RPC device with its endpoint.
    log = head.succeed("journalctl -u xpu-cluster-head.service --no-pager")
    for endpoint in ("192.168.1.2:${toString rpcPort}", "192.168.1.3:${toString rpcPort}"):
        assert re.search(r"RPC[0-9]+\[" + re.escape(endpoint) + r"\] model buffer size", log), \
            f"no model buffer on {endpoint} in the head's log:\n{log}"

    # Only the head reaches the RPC ports: iptables on worker1, nftables on worker2. (IPv4
    # addresses: the host names also resolve to IPv6, where the RPC server does not listen.)
    probe = "timeout 5 bash -c '</dev/tcp/{}/${toString rpcPort}'"
    head.succeed(probe.format("192.168.1.2"))
    head.succeed(probe.format("192.168.1.3"))
    worker2.fail(probe.format("192.168.1.2"))
    worker1.fail(probe.format("192.168.1.3"))
    worker1.succeed("iptables -S nixos-fw | grep -- '-s 192.168.1.1/32 .*--dport ${toString rpcPort}'")
    worker2.succeed("nft list chain inet nixos-fw input-allow | grep -E 'ip saddr [{ ]*192[.]168[.]1[.]1[ }]* tcp dport ${toString rpcPort} accept'")
  '';
}
