# Tests of services.xpu-cluster (modules/nixos/cluster.nix) with lib.evalModules, the stub NixOS
# options (tests/nix/stubs) and fake packages, like ./module-tests.nix. They need nixpkgs' lib/
# (NIXPKGS_LIB); scripts/test-nix.sh runs them.
{ lib }:
let
  fixture = name: ./fixtures + "/facts-${name}.json";
  fakePkgs = import ./stubs/pkgs.nix { };

  evalNixos =
    {
      config ? { },
      firewallBackendOption ? true,
      extraModules ? [ ],
    }:
    (lib.evalModules {
      modules = [
        (import ./stubs/nixos-options.nix { inherit firewallBackendOption; })
        ../../modules/nixos/default.nix
        { _module.args.pkgs = fakePkgs; }
        config
      ]
      ++ extraModules;
    }).config;

  failedAssertions = cfg: map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
  anyMatches = regex: builtins.any (m: builtins.match regex m != null);

  worker =
    facts: extra:
    lib.recursiveUpdate {
      hardware.xpu.factsFile = fixture facts;
      services.xpu-cluster = {
        enable = true;
        role = "worker";
        allowedPeers = [ "10.0.0.1" ];
      };
    } extra;
  head =
    facts: extra:
    lib.recursiveUpdate {
      hardware.xpu.factsFile = fixture facts;
      services.xpu-cluster = {
        enable = true;
        role = "head";
        workers = [
          "10.0.0.2:50052"
          "10.0.0.3:50052"
        ];
      };
    } extra;

  intelWorker = evalNixos { config = worker "intel-dgpu" { }; };
  intelWorkerUnit = intelWorker.systemd.services.xpu-cluster-worker;
  nvidiaWorker = evalNixos { config = worker "nvidia" { services.xserver.videoDrivers = [ "nvidia" ]; }; };
  nvidiaWorkerUnit = nvidiaWorker.systemd.services.xpu-cluster-worker;
  cpuWorker = evalNixos { config = worker "cpu" { }; };
  cpuWorkerUnit = cpuWorker.systemd.services.xpu-cluster-worker;
  cpuHead = evalNixos { config = head "cpu" { }; };
  cpuHeadUnit = cpuHead.systemd.services.xpu-cluster-head;
  intelHead = evalNixos { config = head "intel-dgpu" { }; };

  store = "/nix/store/00000000000000000000000000000000";

  hardeningKeys = [
    "CapabilityBoundingSet"
    "DynamicUser"
    "LockPersonality"
    "MemoryDenyWriteExecute"
    "NoNewPrivileges"
    "PrivateMounts"
    "PrivateTmp"
    "PrivateUsers"
    "ProcSubset"
    "ProtectClock"
    "ProtectControlGroups"
    "ProtectHome"
    "ProtectHostname"
    "ProtectKernelLogs"
    "ProtectKernelModules"
    "ProtectKernelTunables"
    "ProtectProc"
    "ProtectSystem"
    "RemoveIPC"
    "RestrictAddressFamilies"
    "RestrictNamespaces"
    "RestrictRealtime"
    "RestrictSUIDSGID"
    "SystemCallArchitectures"
    "SystemCallFilter"
    "UMask"
  ];

  # The node configurations of checks/vm-cluster.nix, with the addresses runNixOSTest gives.
  vmTest = import ../../checks/vm-cluster.nix {
    self.nixosModules.default = ../../modules/nixos/default.nix;
    inherit fixture;
  };
  vmNodes = lib.mapAttrs (name: n: { networking.primaryIPAddress = n; }) {
    head = "192.168.1.1";
    worker1 = "192.168.1.2";
    worker2 = "192.168.1.3";
  };
  vmNode =
    name:
    evalNixos {
      config = vmTest.nodes.${name};
      extraModules = [
        vmTest.defaults
        { _module.args.nodes = vmNodes; }
        # Options of the test framework that the nodes set.
        {
          options.virtualisation = lib.mkOption {
            type = lib.types.attrsOf lib.types.anything;
            default = { };
          };
        }
      ];
    };
in
{
  # --- workers: the facts choose the build and the devices ---------------------------------
  testIntelWorker = {
    expr = {
      failed = failedAssertions intelWorker;
      package = intelWorker.services.xpu-cluster.package.overrideArgs;
      inherit (intelWorkerUnit.serviceConfig)
        ExecStart
        Type
        Restart
        DynamicUser
        PrivateDevices
        DevicePolicy
        DeviceAllow
        SupplementaryGroups
        ;
      inherit (intelWorkerUnit) wantedBy after;
      graphics = intelWorker.hardware.graphics.enable;
      kernelParams = intelWorker.boot.kernelParams;
      runner = intelWorker.systemd.services ? xpu-runner;
    };
    expected = {
      failed = [ ];
      package = {
        rpcSupport = true;
        vulkanSupport = true;
        cudaSupport = false;
        rocmSupport = false;
      };
      ExecStart = ''${store}-llama-cpp-7000-rpcSupport-vulkanSupport/bin/llama-rpc-server "--host" "0.0.0.0" "--port" "50052"'';
      Type = "exec";
      Restart = "on-failure";
      DynamicUser = true;
      PrivateDevices = false;
      DevicePolicy = "closed";
      DeviceAllow = [ "char-drm" ];
      SupplementaryGroups = [
        "render"
        "video"
      ];
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      # The facts set up the drivers, as for xpu-runner.
      graphics = true;
      kernelParams = [ "xe.force_probe=e20b" ];
      runner = false;
    };
  };
  testIntelWorkerHardeningComplete = {
    expr = builtins.filter (k: !(intelWorkerUnit.serviceConfig ? ${k})) hardeningKeys;
    expected = [ ];
  };
  testIntelWorkerIptablesRule = {
    expr = {
      inherit (intelWorker.networking.firewall) extraCommands extraInputRules allowedTCPPorts;
    };
    expected = {
      extraCommands = "iptables -w -A nixos-fw -p tcp -s 10.0.0.1 --dport 50052 -j nixos-fw-accept\n";
      extraInputRules = "";
      allowedTCPPorts = [ ];
    };
  };
  testNvidiaWorker = {
    expr = {
      failed = failedAssertions nvidiaWorker;
      package = nvidiaWorker.services.xpu-cluster.package.name;
      inherit (nvidiaWorkerUnit.serviceConfig) PrivateDevices DeviceAllow;
      description = nvidiaWorkerUnit.description;
    };
    expected = {
      failed = [ ];
      package = "llama-cpp-7000-cudaSupport-rpcSupport";
      PrivateDevices = false;
      DeviceAllow = [
        "char-nvidiactl"
        "char-nvidia-caps"
        "char-nvidia-frontend"
        "char-nvidia-uvm"
        "/dev/nvidia0 rw"
      ];
      description = "llama.cpp RPC worker of the xpu cluster (cuda)";
    };
  };
  testNvidiaWorkerWithoutDriverAsserts = {
    expr = anyMatches ''.*acceleration is "cuda".*no NVIDIA driver.*videoDrivers.*allowUnfree.*'' (
      failedAssertions (evalNixos { config = worker "nvidia" { hardware.nvidia.datacenter.enable = false; }; })
    );
    expected = true;
  };
  testCpuWorker = {
    expr = {
      failed = failedAssertions cpuWorker;
      package = cpuWorker.services.xpu-cluster.package.name;
      private = cpuWorkerUnit.serviceConfig.PrivateDevices;
      deviceAllow = cpuWorkerUnit.serviceConfig ? DeviceAllow;
      syscalls = cpuWorkerUnit.serviceConfig.SystemCallFilter;
      graphics = cpuWorker.hardware.graphics.enable;
      environment = cpuWorkerUnit.environment;
      cache = cpuWorkerUnit.serviceConfig.CacheDirectory;
    };
    expected = {
      failed = [ ];
      package = "llama-cpp-7000-rpcSupport";
      private = true;
      deviceAllow = false;
      # xpu-runner's CPU hardening: no priority, affinity or NUMA changes (llama-server and
      # ggml-rpc-server on the CPU make none).
      syscalls = [
        "@system-service"
        "~@privileged"
        "~@resources"
      ];
      graphics = false;
      environment = {
        HOME = "/var/cache/xpu-cluster-worker";
        LLAMA_CACHE = "/var/cache/xpu-cluster-worker";
      };
      cache = "xpu-cluster-worker";
    };
  };
  # The user overrides the facts' choice: the build and the sandbox follow.
  testAccelerationOverride = {
    expr =
      let
        c = evalNixos { config = worker "intel-dgpu" { services.xpu-cluster.acceleration = "cpu"; }; };
      in
      {
        package = c.services.xpu-cluster.package.name;
        private = c.systemd.services.xpu-cluster-worker.serviceConfig.PrivateDevices;
      };
    expected = {
      package = "llama-cpp-7000-rpcSupport";
      private = true;
    };
  };
  testWorkerOptions = {
    expr =
      (evalNixos {
        config = worker "cpu" {
          services.xpu-cluster = {
            rpc = {
              port = 6000;
              listenAddress = "10.0.0.2";
              cache = true;
              program = "ggml-rpc-server";
            };
            allowedPeers = [
              "10.0.0.1"
              "10.0.9.0/24"
            ];
            extraFlags = [
              "--threads"
              "8"
            ];
          };
        };
      }).systemd.services.xpu-cluster-worker.serviceConfig.ExecStart;
    expected = ''${store}-llama-cpp-7000-rpcSupport/bin/ggml-rpc-server "--host" "10.0.0.2" "--port" "6000" "--cache" "--threads" "8"'';
  };

  # --- workers: the firewall --------------------------------------------------------------
  testNftablesRule = {
    expr = {
      inherit
        (
          (evalNixos {
            config = worker "cpu" {
              networking.nftables.enable = true;
              services.xpu-cluster.allowedPeers = [
                "10.0.0.1"
                "192.168.5.0/24"
              ];
            };
          }).networking.firewall
        )
        extraCommands
        extraInputRules
        ;
    };
    expected = {
      extraCommands = "";
      extraInputRules = "ip saddr { 10.0.0.1, 192.168.5.0/24 } tcp dport 50052 accept\n";
    };
  };
  # nixpkgs without networking.firewall.backend: networking.nftables.enable decides.
  testNftablesWithoutBackendOption = {
    expr =
      (evalNixos {
        config = worker "cpu" { networking.nftables.enable = true; };
        firewallBackendOption = false;
      }).networking.firewall.extraInputRules;
    expected = "ip saddr { 10.0.0.1 } tcp dport 50052 accept\n";
  };
  testIptablesWithoutBackendOption = {
    expr =
      (evalNixos {
        config = worker "cpu" { };
        firewallBackendOption = false;
      }).networking.firewall.extraCommands;
    expected = "iptables -w -A nixos-fw -p tcp -s 10.0.0.1 --dport 50052 -j nixos-fw-accept\n";
  };
  testWorkerWithoutPeersAsserts = {
    expr =
      let
        c = evalNixos { config = worker "cpu" { services.xpu-cluster.allowedPeers = [ ]; }; };
      in
      {
        explains = anyMatches ".*allowedPeers is empty.*no authentication.*Never run the RPC server on an open network.*allowedPeers = [[] \"10.0.0.1\" []].*" (
          failedAssertions c
        );
        rules = c.networking.firewall.extraCommands;
      };
    expected = {
      explains = true;
      rules = "";
    };
  };
  testWorkerBadPeerAsserts = {
    expr = failedAssertions (
      evalNixos {
        config = worker "cpu" {
          services.xpu-cluster.allowedPeers = [
            "10.0.0.1"
            "head.lan"
          ];
        };
      }
    );
    expected = [
      "services.xpu-cluster.allowedPeers: 'head.lan' is not an IPv4 address or network (such as 10.0.0.7 or 10.0.0.0/24); llama.cpp's RPC backend speaks IPv4 only, and firewall rules need addresses, not host names."
    ];
  };
  testWorkerFirewallOffAsserts = {
    expr = anyMatches ".*networking.firewall.enable is false.*127.0.0.1.*" (
      failedAssertions (evalNixos { config = worker "cpu" { networking.firewall.enable = false; }; })
    );
    expected = true;
  };
  testWorkerLoopbackWithoutFirewallIsFine = {
    expr = failedAssertions (
      evalNixos {
        config = worker "cpu" {
          networking.firewall.enable = false;
          services.xpu-cluster.rpc.listenAddress = "127.0.0.1";
        };
      }
    );
    expected = [ ];
  };
  testWorkerIpv6ListenAsserts = {
    expr = anyMatches ".*listenAddress is '::'.*IPv4 addresses only.*" (
      failedAssertions (evalNixos { config = worker "cpu" { services.xpu-cluster.rpc.listenAddress = "::"; }; })
    );
    expected = true;
  };
  testWorkerFirewalldAsserts = {
    expr =
      let
        c = evalNixos { config = worker "cpu" { networking.firewall.backend = "firewalld"; }; };
      in
      {
        explains = anyMatches ".*backend is \"firewalld\".*nftables.enable.*" (failedAssertions c);
        # No rule for a backend that would not run it (and no evaluation error before the assertion).
        inherit (c.networking.firewall) extraCommands extraInputRules;
      };
    expected = {
      explains = true;
      extraCommands = "";
      extraInputRules = "";
    };
  };
  testWorkerWarnsAboutHeadOptions = {
    expr = anyMatches ".*workers is set on a worker.*" (
      evalNixos { config = worker "cpu" { services.xpu-cluster.workers = [ "10.0.0.3:50052" ]; }; }
    ).warnings;
    expected = true;
  };

  # --- the head ---------------------------------------------------------------------------
  testCpuHead = {
    expr = {
      failed = failedAssertions cpuHead;
      inherit (cpuHeadUnit.serviceConfig)
        ExecStart
        Type
        Restart
        RestartSec
        PrivateDevices
        LoadCredential
        ;
      firewall = {
        inherit (cpuHead.networking.firewall) extraCommands extraInputRules allowedTCPPorts;
      };
      services = builtins.attrNames cpuHead.systemd.services;
    };
    expected = {
      failed = [ ];
      ExecStart = ''${store}-llama-cpp-7000-rpcSupport/bin/llama-server "--model" "${store}-SmolLM2-135M-Instruct.Q4_1.gguf" "--rpc" "10.0.0.2:50052,10.0.0.3:50052" "--n-gpu-layers" "999" "--host" "127.0.0.1" "--port" "8080"'';
      Type = "exec";
      Restart = "on-failure";
      RestartSec = "10s";
      PrivateDevices = true;
      LoadCredential = [ ];
      firewall = {
        extraCommands = "";
        extraInputRules = "";
        allowedTCPPorts = [ ];
      };
      services = [ "xpu-cluster-head" ];
    };
  };
  testCpuHeadHardeningComplete = {
    expr = builtins.filter (k: !(cpuHeadUnit.serviceConfig ? ${k})) hardeningKeys;
    expected = [ ];
  };
  # An Intel head uses its own GPU too (Vulkan), next to the workers.
  testIntelHead = {
    expr = {
      package = intelHead.services.xpu-cluster.package.name;
      inherit (intelHead.systemd.services.xpu-cluster-head.serviceConfig) DeviceAllow PrivateDevices;
    };
    expected = {
      package = "llama-cpp-7000-rpcSupport-vulkanSupport";
      DeviceAllow = [ "char-drm" ];
      PrivateDevices = false;
    };
  };
  testNvidiaHead = {
    expr =
      let
        c = evalNixos { config = head "nvidia" { hardware.nvidia.datacenter.enable = true; }; };
      in
      {
        failed = failedAssertions c;
        package = c.services.xpu-cluster.package.name;
        inherit (c.systemd.services.xpu-cluster-head.serviceConfig) PrivateDevices DevicePolicy;
        hasNvidiaCtl = builtins.elem "char-nvidiactl" c.systemd.services.xpu-cluster-head.serviceConfig.DeviceAllow;
      };
    expected = {
      failed = [ ];
      package = "llama-cpp-7000-cudaSupport-rpcSupport";
      PrivateDevices = false;
      DevicePolicy = "closed";
      hasNvidiaCtl = true;
    };
  };
  testHeadPublicWithKey =
    let
      c = evalNixos {
        config = head "cpu" {
          services.xpu-cluster = {
            host = "0.0.0.0";
            port = 9000;
            openFirewall = true;
            apiKeyFile = "/run/secrets/cluster keys";
            parallel = 4;
            gpuLayers = 20;
            model = "/var/lib/models/big model.gguf";
            extraFlags = [
              "--ctx-size"
              "8192"
            ];
          };
        };
      };
      unit = c.systemd.services.xpu-cluster-head;
    in
    {
      expr = {
        failed = failedAssertions c;
        warnings = c.warnings;
        inherit (unit.serviceConfig) ExecStart LoadCredential;
        ports = c.networking.firewall.allowedTCPPorts;
      };
      expected = {
        failed = [ ];
        warnings = [ ];
        ExecStart = ''${store}-llama-cpp-7000-rpcSupport/bin/llama-server "--model" "/var/lib/models/big model.gguf" "--rpc" "10.0.0.2:50052,10.0.0.3:50052" "--n-gpu-layers" "20" "--host" "0.0.0.0" "--port" "9000" "--parallel" "4" "--ctx-size" "8192" --api-key-file %d/api-key'';
        LoadCredential = [ "api-key:/run/secrets/cluster keys" ];
        ports = [ 9000 ];
      };
    };
  testHeadPublicWithoutKeyAsserts = {
    expr = anyMatches ".*host is 0.0.0.0, and there is no services.xpu-cluster.apiKeyFile.*" (
      failedAssertions (evalNixos { config = head "cpu" { services.xpu-cluster.host = "0.0.0.0"; }; })
    );
    expected = true;
  };
  testHeadApiKeyInStoreAsserts = {
    expr = anyMatches ".*apiKeyFile must be an absolute path outside the Nix store.*" (
      failedAssertions (evalNixos { config = head "cpu" { services.xpu-cluster.apiKeyFile = "/nix/store/abc-keys"; }; })
    );
    expected = true;
  };
  testHeadWithoutWorkersAsserts = {
    expr = anyMatches ".*workers is empty.*services.xpu-runner instead.*" (
      failedAssertions (
        evalNixos {
          config = {
            services.xpu-cluster = {
              enable = true;
              role = "head";
            };
          };
        }
      )
    );
    expected = true;
  };
  testHeadBadWorkersAssert = {
    expr = failedAssertions (
      evalNixos {
        config = head "cpu" {
          services.xpu-cluster.workers = [
            "[fd00::2]:50052"
            "gpu-b"
            "gpu-c:99999"
            "gpu-d:50052"
            "gpu-d:50052"
          ];
        };
      }
    );
    expected = [
      "services.xpu-cluster.workers: '[fd00::2]:50052' is not host:port (such as 10.0.0.2:50052 or gpu-a:50052; IPv6 addresses are not supported by llama.cpp's RPC client)."
      "services.xpu-cluster.workers: 'gpu-b' is not host:port (such as 10.0.0.2:50052 or gpu-a:50052; IPv6 addresses are not supported by llama.cpp's RPC client)."
      "services.xpu-cluster.workers: 'gpu-c:99999' has the port 99999, which is not between 1 and 65535."
      "services.xpu-cluster.workers lists gpu-d:50052 more than once."
    ];
  };
  testHeadModelInHomeAsserts = {
    expr = anyMatches ".*model [(]/home/alice/m.gguf[)] is under a home directory.*" (
      failedAssertions (evalNixos { config = head "cpu" { services.xpu-cluster.model = "/home/alice/m.gguf"; }; })
    );
    expected = true;
  };
  testRoleIsRequired = {
    expr = (evalNixos { config.services.xpu-cluster.enable = true; }).systemd.services;
    expectedError = true;
  };
  # A head may run xpu-runner next to it; both units exist and keep their own settings.
  testHeadNextToRunner = {
    expr = builtins.attrNames (
      evalNixos {
        config = head "cpu" { services.xpu-runner.enable = true; };
      }
    ).systemd.services;
    expected = [
      "xpu-cluster-head"
      "xpu-runner"
    ];
  };

  # --- the VM test's nodes evaluate and agree with each other ------------------------------
  testVmNodes = {
    expr = lib.mapAttrs (
      name: _:
      let
        c = vmNode name;
        unit = c.systemd.services."xpu-cluster-${c.services.xpu-cluster.role}";
      in
      {
        failed = failedAssertions c;
        inherit (unit.serviceConfig) ExecStart;
        inherit (c.networking.firewall) extraCommands extraInputRules;
      }
    ) vmTest.nodes;
    expected = {
      head = {
        failed = [ ];
        ExecStart = ''${store}-llama-cpp-7000-rpcSupport/bin/llama-server "--model" "${store}-SmolLM2-135M-Instruct.Q4_1.gguf" "--rpc" "192.168.1.2:50052,192.168.1.3:50052" "--n-gpu-layers" "999" "--host" "127.0.0.1" "--port" "8080" "--parallel" "1" "--log-verbosity" "4"'';
        extraCommands = "";
        extraInputRules = "";
      };
      worker1 = {
        failed = [ ];
        ExecStart = ''${store}-llama-cpp-7000-rpcSupport/bin/llama-rpc-server "--host" "0.0.0.0" "--port" "50052"'';
        extraCommands = "iptables -w -A nixos-fw -p tcp -s 192.168.1.1 --dport 50052 -j nixos-fw-accept\n";
        extraInputRules = "";
      };
      worker2 = {
        failed = [ ];
        ExecStart = ''${store}-llama-cpp-7000-rpcSupport/bin/llama-rpc-server "--host" "0.0.0.0" "--port" "50052"'';
        extraCommands = "";
        extraInputRules = "ip saddr { 192.168.1.1 } tcp dport 50052 accept\n";
      };
    };
  };
}
