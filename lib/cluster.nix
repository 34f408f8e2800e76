# Pure decisions of `services.xpu-cluster`: a cluster of hosts running llama.cpp's RPC backend.
# Workers run llama.cpp's RPC server, the head runs `llama-server --rpc host:port,...`.
#
# builtins only (like ./default.nix, which passes itself in as `xpu`), so
# tests/nix/cluster-lib-tests.nix runs on any Nix without nixpkgs.
xpu:
let
  inherit (builtins)
    all
    concatStringsSep
    elem
    filter
    fromJSON
    isString
    length
    map
    match
    toJSON
    ;

  # "010" is not an octet here: iptables and nft read a leading zero differently from people.
  isOctet = s: match "0|[1-9][0-9]{0,2}" s != null && fromJSON s <= 255;
in
rec {
  # llama.cpp's own default port for its RPC server.
  defaultRpcPort = 50052;

  # Arguments of nixpkgs' `llama-cpp` (pkgs/by-name/ll/llama-cpp/package.nix) for each
  # acceleration of the facts. Every backend flag is given, so a nixpkgs `config.cudaSupport`
  # or `config.rocmSupport` does not turn a CPU worker into a CUDA build. Intel GPUs use the
  # Vulkan backend (nixpkgs' llama-cpp has no SYCL build); CUDA is unfree.
  llamaCppOverrides =
    acceleration:
    {
      intel = {
        rpcSupport = true;
        vulkanSupport = true;
        cudaSupport = false;
        rocmSupport = false;
      };
      cuda = {
        rpcSupport = true;
        vulkanSupport = false;
        cudaSupport = true;
        rocmSupport = false;
      };
      cpu = {
        rpcSupport = true;
        vulkanSupport = false;
        cudaSupport = false;
        rocmSupport = false;
      };
    }
    .${acceleration}
      or (throw "xpu: unknown acceleration '${toString acceleration}'; expected one of: ${concatStringsSep ", " xpu.accelerations}");

  # A dotted IPv4 address. llama.cpp's RPC transport is IPv4 only: the server binds with
  # inet_addr() and the client resolves with gethostbyname().
  isIPv4 =
    s:
    let
      m = match "([0-9]+)[.]([0-9]+)[.]([0-9]+)[.]([0-9]+)" s;
    in
    isString s && m != null && all isOctet m;

  # An IPv4 address or network (`10.0.0.7`, `10.0.0.0/24`).
  isIPv4Peer =
    s:
    let
      m = match "([^/]+)/([0-9]+)" s;
    in
    isString s && (if m == null then isIPv4 s else isIPv4 (builtins.head m) && isOctet (builtins.elemAt m 1) && fromJSON (builtins.elemAt m 1) <= 32);

  # Why an `allowedPeers` entry cannot become a firewall rule, or null.
  peerProblem =
    peer:
    if isIPv4Peer peer then
      null
    else
      "'${toString peer}' is not an IPv4 address or network (such as 10.0.0.7 or 10.0.0.0/24); llama.cpp's RPC backend speaks IPv4 only, and firewall rules need addresses, not host names";

  # Why a `workers` entry cannot be passed to `--rpc`, or null. llama.cpp splits the entry at
  # its first ':' and resolves the host with gethostbyname(), so IPv6 addresses do not work.
  workerProblem =
    worker:
    let
      m = match "([^:,[:space:]]+):([0-9]+)" worker;
    in
    if !isString worker || m == null then
      "'${toString worker}' is not host:port (such as 10.0.0.2:${toString defaultRpcPort} or gpu-a:${toString defaultRpcPort}; IPv6 addresses are not supported by llama.cpp's RPC client)"
    else if !(match "0|[1-9][0-9]{0,4}" (builtins.elemAt m 1) != null && fromJSON (builtins.elemAt m 1) <= 65535 && fromJSON (builtins.elemAt m 1) > 0) then
      "'${worker}' has the port ${builtins.elemAt m 1}, which is not between 1 and 65535"
    else
      null;

  # Arguments of the worker's RPC server (`-H HOST -p PORT [-c] [-t N]`).
  workerArgs =
    {
      listenAddress,
      port,
      cache ? false,
      threads ? null,
      extraFlags ? [ ],
    }:
    [
      "--host"
      listenAddress
      "--port"
      (toString port)
    ]
    ++ (if cache then [ "--cache" ] else [ ])
    ++ (if threads != null then [ "--threads" (toString threads) ] else [ ])
    ++ extraFlags;

  # Arguments of the head's `llama-server`. `gpuLayers` layers go to the devices (the workers
  # and any local GPU); llama.cpp caps the number at the model's layer count.
  headArgs =
    {
      model,
      workers,
      host,
      port,
      parallel ? null,
      gpuLayers ? 999,
      apiKeyFile ? null,
      extraFlags ? [ ],
    }:
    [
      "--model"
      model
      "--rpc"
      (concatStringsSep "," workers)
      "--n-gpu-layers"
      (toString gpuLayers)
      "--host"
      host
      "--port"
      (toString port)
    ]
    ++ (if parallel != null then [ "--parallel" (toString parallel) ] else [ ])
    ++ (if apiKeyFile != null then [ "--api-key-file" apiKeyFile ] else [ ])
    ++ extraFlags;

  # An ExecStart= line: the program, then the arguments quoted for systemd. `rawArgs` are
  # appended unquoted, for systemd specifiers such as `%d/api-key`.
  execLine =
    {
      program,
      args,
      rawArgs ? [ ],
    }:
    concatStringsSep " " ([ (toString program) (xpu.escapeSystemdExecArgs args) ] ++ rawArgs);

  # Firewall rules that let only `peers` reach TCP `port`, for the firewall backend in use:
  # `iptables` rules go to networking.firewall.extraCommands (run inside the nixos-fw chain's
  # setup, before its final refuse rule), `nftables` rules to networking.firewall.extraInputRules
  # (the input-allow chain). The other attribute stays empty, because each backend's module
  # rejects the other's option.
  firewallRules =
    {
      backend,
      port,
      peers,
    }:
    let
      p = toString port;
      bad = filter (x: peerProblem x != null) peers;
    in
    if bad != [ ] then
      throw "xpu: ${peerProblem (builtins.head bad)}"
    else if peers == [ ] then
      {
        extraCommands = "";
        extraInputRules = "";
      }
    else if backend == "iptables" then
      {
        extraCommands = concatStringsSep "" (
          map (peer: "iptables -w -A nixos-fw -p tcp -s ${peer} --dport ${p} -j nixos-fw-accept\n") peers
        );
        extraInputRules = "";
      }
    else if backend == "nftables" then
      {
        extraCommands = "";
        extraInputRules = "ip saddr { ${concatStringsSep ", " peers} } tcp dport ${p} accept\n";
      }
    else
      throw "xpu: the ${toJSON backend} firewall backend is not supported; expected iptables or nftables";

  # Everything wrong with a worker's network settings, as assertion messages.
  workerNetworkErrors =
    {
      allowedPeers,
      listenAddress,
      firewallEnabled,
      backend,
    }:
    let
      peerErrors = map (peer: "services.xpu-cluster.allowedPeers: ${peerProblem peer}.") (filter (peer: peerProblem peer != null) allowedPeers);
    in
    (
      if allowedPeers == [ ] then
        [
          ''
            services.xpu-cluster.allowedPeers is empty. The llama.cpp RPC server has no authentication and
            no encryption: anyone who reaches its port can read and write this host's device memory and make it
            run arbitrary computations (llama.cpp's RPC README: "Never run the RPC server on an open network").
            List the addresses of the head (and only them), e.g.
              services.xpu-cluster.allowedPeers = [ "10.0.0.1" ];
            The module opens the RPC port in the firewall for exactly those addresses.''
        ]
      else
        [ ]
    )
    ++ peerErrors
    ++ (
      if !isIPv4 listenAddress then
        [
          "services.xpu-cluster.rpc.listenAddress is '${listenAddress}', but llama.cpp's RPC server binds IPv4 addresses only (inet_addr); use e.g. \"0.0.0.0\" or this host's address on the cluster network."
        ]
      else
        [ ]
    )
    ++ (
      if !firewallEnabled && !(xpu.isLoopbackHost listenAddress) then
        [
          ''
            services.xpu-cluster limits the RPC port to allowedPeers with the NixOS firewall, but
            networking.firewall.enable is false, so every host that can reach ${listenAddress} could use the
            unauthenticated RPC server. Enable the firewall, or set services.xpu-cluster.rpc.listenAddress = "127.0.0.1"
            and reach the worker through a tunnel of your own.''
        ]
      else
        [ ]
    )
    ++ (
      if firewallEnabled && !(elem backend [ "iptables" "nftables" ]) then
        [
          "services.xpu-cluster limits the RPC port to allowedPeers with iptables or nftables rules, but networking.firewall.backend is \"${backend}\", which takes neither. Use networking.nftables.enable = true (or the iptables backend)."
        ]
      else
        [ ]
    );

  # Everything wrong with a head's settings, as assertion messages.
  headErrors =
    { workers }:
    (
      if workers == [ ] then
        [
          "services.xpu-cluster.workers is empty: a head offloads layers to workers (\"host:port\" of their RPC servers), e.g. [ \"10.0.0.2:${toString defaultRpcPort}\" ]. For one machine use services.xpu-runner instead."
        ]
      else
        [ ]
    )
    ++ map (w: "services.xpu-cluster.workers: ${workerProblem w}.") (filter (w: workerProblem w != null) workers)
    ++ (
      let
        dups = filter (w: length (filter (x: x == w) workers) > 1) workers;
      in
      if dups != [ ] then [ "services.xpu-cluster.workers lists ${builtins.head dups} more than once." ] else [ ]
    );
}
