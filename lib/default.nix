# Pure decision logic of the xpu flake: hardware facts (the JSON that `xpu-probe` writes) in,
# package variant, systemd device rules, kernel parameters and runner arguments out.
#
# Everything here uses builtins only, so it evaluates on any Nix (2.8 included) without
# nixpkgs, and `tests/nix/lib-tests.nix` can test it with `nix-instantiate --eval`. The NixOS
# and Home Manager modules stay thin: they read options, call these functions and set config.
let
  inherit (builtins)
    all
    any
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    fromJSON
    head
    isAttrs
    isBool
    isInt
    isList
    isString
    match
    readFile
    replaceStrings
    stringLength
    substring
    toJSON
    typeOf
    ;

  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  hasSuffix =
    suffix: s:
    let
      ls = stringLength s;
      lx = stringLength suffix;
    in
    ls >= lx && substring (ls - lx) lx s == suffix;
  attrOr =
    set: name: default:
    if isAttrs set && set ? ${name} then set.${name} else default;

  self = rec {
    # The facts schema versions this flake understands. A newer probe that changes the
    # meaning of fields bumps `schema_version`; the modules then refuse to guess.
    supportedSchemaVersions = [ 1 ];

    variants = [
      "exo-intel"
      "exo-cuda"
      "exo-cpu"
    ];

    accelerations = [
      "intel"
      "cuda"
      "cpu"
    ];

    # Variant package name <-> the `passthru.acceleration` marker that package carries.
    variantAcceleration =
      variant:
      {
        exo-intel = "intel";
        exo-cuda = "cuda";
        exo-cpu = "cpu";
      }
      .${variant} or (throw "xpu: unknown variant '${toString variant}'; expected one of: ${concatStringsSep ", " variants}");

    accelerationVariant =
      acceleration:
      {
        intel = "exo-intel";
        cuda = "exo-cuda";
        cpu = "exo-cpu";
      }
      .${acceleration} or (throw "xpu: unknown acceleration '${toString acceleration}'; expected one of: ${concatStringsSep ", " accelerations}");

    # The runner's `--device` for a package: the engine that package was built for.
    runnerDevice =
      acceleration:
      {
        intel = "vulkan";
        cuda = "cuda";
        cpu = "cpu";
      }
      .${acceleration} or (throw "xpu: unknown acceleration '${toString acceleration}'; expected one of: ${concatStringsSep ", " accelerations}");

    # Reads a facts file: the probe's JSON (`xpu-probe -o facts.json`), or its Nix rendering
    # (`xpu-probe --format nix -o facts.nix`). Anything else gets an error that says what to do,
    # instead of a bare JSON parser message.
    readFacts =
      path:
      let
        name = toString path;
        text = readFile path;
        # Regexes only on the ends: std::regex overflows its stack on long inputs.
        head64 = substring 0 64 text;
        tail64 = if stringLength text > 64 then substring (stringLength text - 64) 64 text else text;
        looksLikeJsonObject = match "[[:space:]]*[{].*" head64 != null;
        looksComplete = match ".*[}][[:space:]]*" tail64 != null;
        probeHint = "Run `xpu-probe -o facts.json` on the target machine, commit facts.json next to the configuration and point hardware.xpu.factsFile at it.";
      in
      if hasSuffix ".nix" name then
        import path
      else if text == "" then
        throw "xpu: the facts file ${name} is empty. ${probeHint}"
      else if !looksLikeJsonObject then
        throw "xpu: the facts file ${name} is not a JSON object (was it written with --format text?). ${probeHint}"
      else if !looksComplete then
        throw "xpu: the facts file ${name} does not end with '}': it is truncated or not a single JSON object. ${probeHint}"
      else
        fromJSON text;

    # Everything that is wrong with a facts value, as messages for NixOS assertions. An empty
    # list means the facts can be used.
    factsErrors =
      facts:
      let
        version = attrOr facts "schema_version" null;
        recommendation = attrOr facts "recommendation" null;
        variant = attrOr recommendation "variant" null;
        listOfStrings = v: isList v && all isString v;
        listField =
          name:
          let
            v = attrOr recommendation name [ ];
          in
          if listOfStrings v then
            [ ]
          else
            [ "recommendation.${name} must be a list of strings, found ${typeOf v}" ];
        fix = "Re-run the xpu-probe that matches this flake (`nix run <this flake>#probe -- -o facts.json`), commit the file and rebuild.";
      in
      if !isAttrs facts then
        [ "the facts are a ${typeOf facts}, not an object. ${fix}" ]
      else if version == null then
        [ "the facts have no schema_version; this is not a file written by xpu-probe. ${fix}" ]
      else if !(elem version supportedSchemaVersions) then
        [
          "the facts have schema_version ${toJSON version}, but this flake understands ${concatStringsSep ", " (map toString supportedSchemaVersions)}. ${fix}"
        ]
      else if !isAttrs recommendation then
        [ "the facts have no recommendation object. ${fix}" ]
      else
        (
          if elem variant variants then
            [ ]
          else
            [
              "recommendation.variant is ${toJSON variant}; expected one of ${concatStringsSep ", " variants}. ${fix}"
            ]
        )
        ++ concatLists (
          map listField [
            "kernel_params"
            "device_allow"
            "supplementary_groups"
            "warnings"
          ]
        )
        ++ (if isList (attrOr facts "gpus" [ ]) then [ ] else [ "gpus must be a list. ${fix}" ])
        ++ map (p: "recommendation.kernel_params has an entry '${p}' that is not a force_probe parameter. ${fix}") (
          filter (p: isString p && !(isForceProbeParam p)) (attrOr recommendation "kernel_params" [ ])
        )
        ++ map (d: "recommendation.device_allow has an entry '${d}' that is not a systemd DeviceAllow rule. ${fix}") (
          filter (d: isString d && !(isDeviceAllowRule d)) (attrOr recommendation "device_allow" [ ])
        );

    factsAreValid = facts: factsErrors facts == [ ];

    # The variant the probe recommends; exo-cpu when there are no (usable) facts.
    recommendedVariant =
      facts: if facts != { } && factsAreValid facts then facts.recommendation.variant else "exo-cpu";

    gpus = facts: if isAttrs facts && isList (attrOr facts "gpus" [ ]) then attrOr facts "gpus" [ ] else [ ];
    gpusOf = vendor: facts: filter (g: isAttrs g && attrOr g "vendor" null == vendor) (gpus facts);
    hasGpuOf = vendor: facts: gpusOf vendor facts != [ ];

    # The only kernel parameters the modules pass on from facts: moving an Intel device to
    # i915 or xe (`i915.force_probe=56a0`, `i915.force_probe=!e20b`, `xe.force_probe=e20b`).
    isForceProbeParam = p: match "(i915|xe)[.]force_probe=!?([0-9a-f]{4}|[*])" p != null;

    # systemd DeviceAllow entries: a device class (`char-drm`) or a /dev node, optionally
    # followed by access flags (`/dev/nvidia0 rw`).
    isDeviceAllowRule = d: match "(char|block)-[a-z0-9_-]+( [rwm]+)?|/dev/[A-Za-z0-9_./-]+( [rwm]+)?" d != null;

    # Kernel parameters for the Intel GPUs in the facts. The probe's recommendation lists
    # what is needed now; the per-GPU `force_probe.needed` flag keeps a parameter that is only
    # "present" because an earlier rebuild of this very module set it. Returns [] for other
    # variants, and for facts that did not pass `factsErrors`.
    kernelParams =
      { facts, variant }:
      if variant != "exo-intel" || facts == { } || !(factsAreValid facts) then
        [ ]
      else
        let
          fromRecommendation = attrOr facts.recommendation "kernel_params" [ ];
          fromGpus = concatLists (
            map (
              g:
              let
                fp = attrOr (attrOr g "intel" null) "force_probe" null;
                param = attrOr fp "param" null;
              in
              if attrOr fp "needed" false == true && isString param && isForceProbeParam param then [ param ] else [ ]
            ) (gpusOf "intel" facts)
          );
        in
        unique (fromRecommendation ++ fromGpus);

    # The kernel drivers the facts say the Intel GPUs need ("i915" / "xe").
    intelRequiredDrivers =
      facts:
      unique (
        filter isString (map (g: attrOr (attrOr g "intel" null) "required_driver" null) (gpusOf "intel" facts))
      );

    # Device access of the runner unit, derived from the package's `passthru.acceleration`.
    # `facts` may add DeviceAllow entries and groups that the probe found, but only when the
    # probe recommended this very acceleration: a CPU package never gets devices.
    deviceAccess =
      {
        acceleration,
        facts ? { },
      }:
      let
        base =
          {
            intel = {
              PrivateDevices = false;
              DevicePolicy = "closed";
              # DRM major 226: /dev/dri/card* and /dev/dri/renderD*. Compute needs renderD*.
              DeviceAllow = [ "char-drm" ];
              SupplementaryGroups = [ "render" ];
            };
            cuda = {
              PrivateDevices = false;
              DevicePolicy = "closed";
              # /dev/nvidiactl, /dev/nvidia[0-9]*, /dev/nvidia-caps/*, /dev/nvidia-uvm*.
              DeviceAllow = [
                "char-nvidiactl"
                "char-nvidia-caps"
                "char-nvidia-frontend"
                "char-nvidia-uvm"
              ];
              SupplementaryGroups = [ ];
            };
            cpu = {
              PrivateDevices = true;
              SupplementaryGroups = [ ];
            };
          }
          .${acceleration}
            or (throw "xpu: the runner package has passthru.acceleration = ${toJSON acceleration}; expected one of: ${concatStringsSep ", " accelerations}");
        factsApply =
          acceleration != "cpu"
          && facts != { }
          && factsAreValid facts
          && variantAcceleration facts.recommendation.variant == acceleration;
        extraAllow = if factsApply then attrOr facts.recommendation "device_allow" [ ] else [ ];
        extraGroups = if factsApply then attrOr facts.recommendation "supplementary_groups" [ ] else [ ];
      in
      if acceleration == "cpu" then
        base
      else
        base
        // {
          DeviceAllow = unique (base.DeviceAllow ++ extraAllow);
          SupplementaryGroups = unique (base.SupplementaryGroups ++ extraGroups);
        };

    # The hardening block shared by nixpkgs' ollama and llama-cpp services, adjusted per
    # acceleration: GPU variants need the @resources syscalls (memory locking and priorities
    # of GPU runtimes). ProcSubset stays "all" (as in ollama) for every variant: GPU drivers
    # read /proc/meminfo, and candle sizes its CPU thread pool from /proc/cpuinfo (physical
    # cores; without it, every SMT thread, which slows decoding down).
    hardening =
      acceleration:
      let
        gpu = acceleration != "cpu";
      in
      {
        CapabilityBoundingSet = [ "" ];
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        PrivateMounts = true;
        PrivateTmp = true;
        PrivateUsers = true;
        ProcSubset = "all";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallErrorNumber = "EPERM";
        SystemCallFilter = [
          (if gpu then "@system-service @resources" else "@system-service")
          "~@privileged"
        ];
        UMask = "0077";
      };

    # Quotes one argument for an ExecStart= line: systemd unquotes C-style strings, and
    # expands `%` specifiers and `$` variables, so both are doubled (as nixpkgs'
    # utils.escapeSystemdExecArg does).
    escapeSystemdExecArg =
      arg:
      let
        s =
          if isString arg then
            arg
          else if builtins.isPath arg then
            "${arg}"
          else if isInt arg || isBool arg then
            toJSON arg
          else if isAttrs arg && arg ? outPath then
            "${arg}"
          else
            throw "xpu: cannot put a ${typeOf arg} into an ExecStart= line";
      in
      replaceStrings [ "%" "$" ] [ "%%" "$$" ] (toJSON s);

    escapeSystemdExecArgs = args: concatStringsSep " " (map escapeSystemdExecArg args);

    # Arguments of `xpu-runner serve` for the service units. `apiKeyArg` is inserted raw (it
    # carries a systemd specifier such as `%d/api-key`).
    serveArgs =
      {
        model,
        modelId ? null,
        host,
        port,
        device,
        factsFile ? null,
        apiKeyArg ? null,
        extraArgs ? [ ],
      }:
      let
        escaped = escapeSystemdExecArgs (
          [
            "serve"
            "--model"
            model
          ]
          ++ (if modelId != null then [ "--model-id" modelId ] else [ ])
          ++ [
            "--host"
            host
            "--port"
            port
            "--device"
            device
          ]
          ++ (if factsFile != null then [ "--facts" factsFile ] else [ ])
        );
        extra = if extraArgs == [ ] then "" else " " + escapeSystemdExecArgs extraArgs;
      in
      escaped + (if apiKeyArg != null then " --api-key-file ${apiKeyArg}" else "") + extra;

    # Why a model path cannot be read by the sandboxed service (ProtectHome=, PrivateTmp=), or
    # null when it can.
    modelPathProblem =
      model:
      let
        p = toString model;
        under = dir: p == dir || substring 0 (stringLength dir + 1) p == dir + "/";
      in
      if any under [ "/home" "/root" "/run/user" ] then
        "is under a home directory, which ProtectHome=true hides from the service"
      else if any under [ "/tmp" "/var/tmp" ] then
        "is in /tmp or /var/tmp, which PrivateTmp=true replaces with an empty directory for the service"
      else
        null;

    # host:port for a systemd ListenStream=; IPv6 addresses get brackets.
    listenAddress =
      host: port:
      let
        bare = replaceStrings [ "[" "]" ] [ "" "" ] host;
      in
      if match ".*:.*" bare != null then "[${bare}]:${toString port}" else "${host}:${toString port}";

    isLoopbackHost = host: elem host [ "127.0.0.1" "::1" "localhost" "[::1]" ] || match "127[.].*" host != null;

    # Source filter for the Rust workspace: Cargo.toml, Cargo.lock and the top-level directories
    # of the workspace members, never build outputs or VCS data. `root` is the repository root;
    # the result is a `path: type: bool` predicate for `lib.cleanSourceWith` / `builtins.path`
    # (Nix 2.8 has no lib.fileset). The members come from Cargo.toml, so a new crate is picked
    # up without touching Nix code.
    rustSourceFilter = root: rustSourceFilterWith {
      inherit root;
      members = workspaceMembers (root + "/Cargo.toml");
    };

    rustSourceFilterWith =
      { root, members }:
      let
        rootStr = toString root;
        topLevel = [
          "Cargo.toml"
          "Cargo.lock"
          ".cargo"
        ]
        ++ unique (map (m: head (filter isString (builtins.split "/" m))) members);
      in
      path: type:
      let
        p = toString path;
        rel = if substring 0 (stringLength rootStr + 1) p == rootStr + "/" then substring (stringLength rootStr + 1) (stringLength p) p else p;
        parts = filter isString (builtins.split "/" rel);
        base = baseNameOf p;
      in
      elem (head parts) topLevel
      && match "target.*" base == null
      && match "result.*" base == null
      && !(elem base [ ".git" ".direnv" ])
      && match ".*~" base == null;

    workspaceMembers = cargoToml: (builtins.fromTOML (readFile cargoToml)).workspace.members;

    # The workspace version, from Cargo.toml's [workspace.package] (single source of truth).
    workspaceVersion = cargoToml: (builtins.fromTOML (readFile cargoToml)).workspace.package.version;

    # services.xpu-cluster: llama.cpp RPC workers and head (./cluster.nix).
    cluster = import ./cluster.nix self;
  };
in
self
