# Unit tests of lib/cluster.nix (the decisions of services.xpu-cluster), builtins only, in
# nix-unit's shape like ./lib-tests.nix. scripts/test-nix.sh runs them.
let
  xpu = import ../../lib;
  c = xpu.cluster;
  fixture = name: xpu.readFacts (./fixtures + "/facts-${name}.json");
  accelerationOf = facts: xpu.variantAcceleration (xpu.recommendedVariant facts);
in
{
  # --- the llama.cpp build from the facts ---------------------------------------------------
  testBuildFromFacts = {
    expr = map (f: c.llamaCppOverrides (accelerationOf (fixture f))) [
      "intel-dgpu"
      "intel-igpu"
      "nvidia"
      "cpu"
    ];
    expected = [
      {
        rpcSupport = true;
        vulkanSupport = true;
        cudaSupport = false;
        rocmSupport = false;
      }
      {
        rpcSupport = true;
        vulkanSupport = true;
        cudaSupport = false;
        rocmSupport = false;
      }
      {
        rpcSupport = true;
        vulkanSupport = false;
        cudaSupport = true;
        rocmSupport = false;
      }
      {
        rpcSupport = true;
        vulkanSupport = false;
        cudaSupport = false;
        rocmSupport = false;
      }
    ];
  };
  testUnknownAccelerationThrows = {
    expr = c.llamaCppOverrides "rocm";
    expectedError = true;
  };

  # --- addresses ----------------------------------------------------------------------------
  testIPv4 = {
    expr = map c.isIPv4 [
      "10.0.0.1"
      "0.0.0.0"
      "255.255.255.255"
      "256.0.0.1"
      "10.0.0"
      "10.0.0.01"
      "::1"
      "gpu-a"
      " 10.0.0.1"
    ];
    expected = [
      true
      true
      true
      false
      false
      false
      false
      false
      false
    ];
  };
  testPeers = {
    expr = map c.isIPv4Peer [
      "10.0.0.1"
      "10.0.0.0/24"
      "0.0.0.0/0"
      "10.0.0.0/32"
      "10.0.0.0/33"
      "10.0.0.0/"
      "fd00::/8"
      "head.lan"
    ];
    expected = [
      true
      true
      true
      true
      false
      false
      false
      false
    ];
  };
  testPeerProblem = {
    expr = map c.peerProblem [
      "10.0.0.1"
      "fd00::1"
    ];
    expected = [
      null
      "'fd00::1' is not an IPv4 address or network (such as 10.0.0.7 or 10.0.0.0/24); llama.cpp's RPC backend speaks IPv4 only, and firewall rules need addresses, not host names"
    ];
  };
  testWorkerProblem = {
    expr = map c.workerProblem [
      "10.0.0.2:50052"
      "gpu-a.lan:1"
      "gpu-a:65535"
      "gpu-a:65536"
      "gpu-a:0"
      "gpu-a:050052"
      "[fd00::2]:50052"
      "a:1,b:2"
      "gpu-a"
    ];
    expected = [
      null
      null
      null
      "'gpu-a:65536' has the port 65536, which is not between 1 and 65535"
      "'gpu-a:0' has the port 0, which is not between 1 and 65535"
      "'gpu-a:050052' has the port 050052, which is not between 1 and 65535"
      "'[fd00::2]:50052' is not host:port (such as 10.0.0.2:50052 or gpu-a:50052; IPv6 addresses are not supported by llama.cpp's RPC client)"
      "'a:1,b:2' is not host:port (such as 10.0.0.2:50052 or gpu-a:50052; IPv6 addresses are not supported by llama.cpp's RPC client)"
      "'gpu-a' is not host:port (such as 10.0.0.2:50052 or gpu-a:50052; IPv6 addresses are not supported by llama.cpp's RPC client)"
    ];
  };

  # --- command lines ------------------------------------------------------------------------
  testWorkerArgs = {
    expr = [
      (c.workerArgs {
        listenAddress = "0.0.0.0";
        port = 50052;
      })
      (c.workerArgs {
        listenAddress = "10.0.0.2";
        port = 6000;
        cache = true;
        threads = 8;
        extraFlags = [
          "--device"
          "Vulkan0"
        ];
      })
    ];
    expected = [
      [
        "--host"
        "0.0.0.0"
        "--port"
        "50052"
      ]
      [
        "--host"
        "10.0.0.2"
        "--port"
        "6000"
        "--cache"
        "--threads"
        "8"
        "--device"
        "Vulkan0"
      ]
    ];
  };
  testHeadArgs = {
    expr = c.headArgs {
      model = "/m/model.gguf";
      workers = [
        "10.0.0.2:50052"
        "10.0.0.3:50052"
      ];
      host = "127.0.0.1";
      port = 8080;
      parallel = 2;
      apiKeyFile = "/run/keys";
      extraFlags = [ "--no-webui" ];
    };
    expected = [
      "--model"
      "/m/model.gguf"
      "--rpc"
      "10.0.0.2:50052,10.0.0.3:50052"
      "--n-gpu-layers"
      "999"
      "--host"
      "127.0.0.1"
      "--port"
      "8080"
      "--parallel"
      "2"
      "--api-key-file"
      "/run/keys"
      "--no-webui"
    ];
  };
  # systemd would expand `%` and `$`; the quoting doubles them, the raw part stays a specifier.
  testExecLineQuoting = {
    expr = c.execLine {
      program = "/nix/store/x-llama-cpp/bin/llama-server";
      args = [
        "--model"
        "/var/lib/models/100% $HOME \"q\".gguf"
      ];
      rawArgs = [
        "--api-key-file"
        "%d/api-key"
      ];
    };
    expected = ''/nix/store/x-llama-cpp/bin/llama-server "--model" "/var/lib/models/100%% $$HOME \"q\".gguf" --api-key-file %d/api-key'';
  };

  # --- firewall -----------------------------------------------------------------------------
  testIptablesRules = {
    expr = c.firewallRules {
      backend = "iptables";
      port = 50052;
      peers = [
        "10.0.0.1"
        "10.0.1.0/24"
      ];
    };
    expected = {
      extraCommands = ''
        iptables -w -A nixos-fw -p tcp -s 10.0.0.1 --dport 50052 -j nixos-fw-accept
        iptables -w -A nixos-fw -p tcp -s 10.0.1.0/24 --dport 50052 -j nixos-fw-accept
      '';
      extraInputRules = "";
    };
  };
  testNftablesRules = {
    expr = c.firewallRules {
      backend = "nftables";
      port = 6000;
      peers = [
        "10.0.0.1"
        "10.0.1.0/24"
      ];
    };
    expected = {
      extraCommands = "";
      extraInputRules = "ip saddr { 10.0.0.1, 10.0.1.0/24 } tcp dport 6000 accept\n";
    };
  };
  # No peers: nothing is opened, for either backend.
  testNoPeersNoRules = {
    expr = map (
      backend:
      c.firewallRules {
        inherit backend;
        port = 50052;
        peers = [ ];
      }
    ) [ "iptables" "nftables" ];
    expected = [
      {
        extraCommands = "";
        extraInputRules = "";
      }
      {
        extraCommands = "";
        extraInputRules = "";
      }
    ];
  };
  # A peer that is not an address never reaches a rule (it could inject shell or nft syntax).
  testBadPeerThrows = {
    expr = c.firewallRules {
      backend = "iptables";
      port = 50052;
      peers = [ "10.0.0.1; rm -rf /" ];
    };
    expectedError = true;
  };
  testFirewalldThrows = {
    expr = c.firewallRules {
      backend = "firewalld";
      port = 50052;
      peers = [ "10.0.0.1" ];
    };
    expectedError = true;
  };

  # --- checks -------------------------------------------------------------------------------
  testWorkerNetworkFine = {
    expr = c.workerNetworkErrors {
      allowedPeers = [ "10.0.0.1" ];
      listenAddress = "0.0.0.0";
      firewallEnabled = true;
      backend = "nftables";
    };
    expected = [ ];
  };
  testWorkerNetworkErrorCount = {
    expr = builtins.length (
      c.workerNetworkErrors {
        allowedPeers = [ ];
        listenAddress = "::";
        firewallEnabled = false;
        backend = "iptables";
      }
    );
    # no peers, IPv6 listen address, firewall off
    expected = 3;
  };
  testHeadErrors = {
    expr = [
      (c.headErrors { workers = [ "10.0.0.2:50052" ]; })
      (builtins.length (c.headErrors { workers = [ ]; }))
    ];
    expected = [
      [ ]
      1
    ];
  };
}
