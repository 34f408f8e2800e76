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
    attrNames
    concatLists
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    fromJSON
    genList
    head
    isAttrs
    isBool
    isInt
    isList
    isString
    length
    lessThan
    listToAttrs
    match
    readFile
    replaceStrings
    sort
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
  lastOf = list: elemAt list (length list - 1);
  charsOf = s: genList (i: substring i 1 s) (stringLength s);
  toLower = replaceStrings (charsOf "ABCDEFGHIJKLMNOPQRSTUVWXYZ") (charsOf "abcdefghijklmnopqrstuvwxyz");
  # The value of one hex digit (lower case): its position in "0123456789abcdef".
  hexDigit = c: stringLength (head (builtins.split c "0123456789abcdef"));
  hexValue = s: foldl' (acc: c: acc * 16 + hexDigit (toLower c)) 0 (charsOf s);
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

    # The acceleration a runner package was built for (its `passthru.acceleration`); "cpu" for
    # a package without a valid marker (the modules assert on that separately).
    packageAcceleration =
      package:
      let
        marker = attrOr (attrOr package "passthru" { }) "acceleration" null;
      in
      if elem marker accelerations then marker else "cpu";

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

    # The GPUs the Vulkan engine splits a model over by default (`--devices`): the PCI
    # addresses of every compute-capable discrete GPU of the package's vendor in the facts
    # (Intel for exo-intel, NVIDIA for exo-cuda), in address order; null when there is none,
    # which leaves the runner's `auto`.
    runnerDevices =
      acceleration: facts:
      let
        vendor =
          {
            intel = "intel";
            cuda = "nvidia";
          }
          .${acceleration} or null;
        usable = g: attrOr g "compute_capable" false == true && attrOr g "integrated" true == false && isString (attrOr g "pci_address" null);
        addresses = sort lessThan (map (g: g.pci_address) (filter usable (gpusOf vendor facts)));
      in
      if vendor == null || addresses == [ ] then null else addresses;

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

    # The hardening block shared by nixpkgs' ollama and llama-cpp services. ProcSubset stays
    # "all" (as in ollama) for every variant: GPU drivers read /proc/meminfo, and candle sizes
    # its CPU thread pool from /proc/cpuinfo (physical cores; without it, every SMT thread,
    # which slows decoding down). The system call filter depends on the acceleration
    # (`systemCallFilter`).
    hardening =
      acceleration:
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
        SystemCallFilter = systemCallFilter acceleration;
        UMask = "0077";
      };

    # systemd's SystemCallFilter= for the runner. `@system-service` already contains
    # `@resources` (priorities, CPU affinity, NUMA memory policy, rlimits: setpriority,
    # sched_setscheduler, sched_setaffinity, mbind, set_mempolicy, setrlimit, ...), so naming it
    # again allows nothing more. The CPU build calls none of them, so it denies them, as nixpkgs'
    # llama-cpp module does; a call made anyway fails with EPERM (SystemCallErrorNumber=)
    # instead of killing the runner. GPU builds keep them: Mesa's driver threads (the Vulkan
    # engine on Intel) lower their own priority (nice, SCHED_BATCH) and reset their CPU affinity
    # (util/u_queue.c), and what the closed CUDA driver calls cannot be read.
    systemCallFilter =
      acceleration:
      [
        "@system-service"
        "~@privileged"
      ]
      ++ (if acceleration == "cpu" then [ "~@resources" ] else [ ]);

    # A Nix value (string, path, package, number, bool) as the string systemd should see.
    toSystemdString =
      value:
      if isString value then
        value
      else if builtins.isPath value then
        "${value}"
      else if isInt value || isBool value then
        toJSON value
      else if isAttrs value && value ? outPath then
        "${value}"
      else
        throw "xpu: cannot put a ${typeOf value} into a systemd unit";

    # Quotes one argument for an ExecStart= line: systemd unquotes C-style strings, and
    # expands `%` specifiers and `$` variables, so both are doubled (as nixpkgs'
    # utils.escapeSystemdExecArg does).
    escapeSystemdExecArg = arg: replaceStrings [ "%" "$" ] [ "%%" "$$" ] (toJSON (toSystemdString arg));

    escapeSystemdExecArgs = args: concatStringsSep " " (map escapeSystemdExecArg args);

    # `Environment=` assignments, one per variable, quoted as NixOS writes them
    # (nixos/lib/systemd-lib.nix): systemd unquotes C-style double-quoted strings (backslash
    # escapes), so spaces, quotes and backslashes survive. `$` is not special there; `%`
    # specifiers are expanded, as in every NixOS unit (write `%%` for a literal `%`).
    systemdEnvironment = env: map (name: toJSON "${name}=${toSystemdString env.${name}}") (attrNames env);

    # A value for a unit setting that expands `%` specifiers, kept literal.
    escapeSystemdSpecifiers = replaceStrings [ "%" ] [ "%%" ];

    # The settings of `xpu-runner serve` as its XPU_RUNNER_* environment variables (see
    # runner/src/server/config.rs), for a unit's environment. The modules pass their options
    # this way, so that variables the user sets replace them and flags on the command line
    # win over both (the runner's rule: command line > environment). Unset (null) settings
    # are left out, so the runner's defaults apply. Values are literal: `%` is escaped.
    runnerEnvironment =
      {
        model,
        modelId ? null,
        models ? { },
        modelsDir ? null,
        maxLoadedModels ? null,
        memoryBudget ? null,
        host,
        port,
        device,
        factsFile ? null,
        apiKeyFile ? null,
        shutdownTimeoutSec ? null,
        contextSize ? null,
        threads ? null,
        maxQueue ? null,
        maxTokensDefault ? null,
        parallel ? null,
        kvCacheTokens ? null,
        prefillChunk ? null,
        devices ? null,
      }:
      let
        # Several models: `ID=PATH` each, comma-separated (the runner's `--model` list);
        # they replace `model` and `modelId`.
        several = models != { };
        settings = {
          XPU_RUNNER_MODEL = if several then modelList models else model;
          XPU_RUNNER_MODEL_ID = if several then null else modelId;
          XPU_RUNNER_MODELS_DIR = modelsDir;
          XPU_RUNNER_MAX_LOADED_MODELS = maxLoadedModels;
          XPU_RUNNER_MEMORY_BUDGET = memoryBudget;
          XPU_RUNNER_HOST = host;
          XPU_RUNNER_PORT = port;
          XPU_RUNNER_DEVICE = device;
          XPU_RUNNER_FACTS = factsFile;
          XPU_RUNNER_API_KEY_FILE = apiKeyFile;
          XPU_RUNNER_SHUTDOWN_TIMEOUT = shutdownTimeoutSec;
          XPU_RUNNER_CTX = contextSize;
          XPU_RUNNER_THREADS = threads;
          XPU_RUNNER_MAX_QUEUE = maxQueue;
          XPU_RUNNER_MAX_TOKENS_DEFAULT = maxTokensDefault;
          XPU_RUNNER_PARALLEL = parallel;
          XPU_RUNNER_KV_CACHE_TOKENS = kvCacheTokens;
          XPU_RUNNER_PREFILL_CHUNK = prefillChunk;
          # `auto`, or adapter indices and PCI addresses, comma-separated.
          XPU_RUNNER_DEVICES = if isList devices then concatStringsSep "," (map toString devices) else devices;
        };
        set = filter (name: settings.${name} != null) (attrNames settings);
      in
      listToAttrs (
        map (name: {
          inherit name;
          value = escapeSystemdSpecifiers (toSystemdString settings.${name});
        }) set
      );

    # `services.xpu-runner.models` as the runner's `--model` list: `ID=PATH,ID=PATH`. An id
    # must not hold what the list and `ID=` use (`,`, `=`) nor look like a path (`/`); a
    # path must not hold `,`.
    modelList =
      models:
      let
        entry =
          name:
          let
            path = toString models.${name};
          in
          if name == "" || match ".*[,=/[:space:]].*" name != null || substring 0 3 name == "hf:" then
            throw "services.xpu-runner.models: the name `${name}` cannot be a model id; use letters, digits, `.`, `-`, `_` or `:` (no `,`, `=`, `/` or spaces, not starting with `hf:`)"
          else if match ".*,.*" path != null then
            throw "services.xpu-runner.models.${name}: the path `${path}` contains a comma, which the runner's model list cannot carry; rename the file"
          else
            "${name}=${path}";
      in
      concatStringsSep "," (map entry (attrNames models));

    # The id clients must name for a model: the package's `passthru.modelId` (the default
    # model has one), else null and the runner derives it from the file.
    modelIdOf = model: if isAttrs model then attrOr (attrOr model "passthru" { }) "modelId" null else null;

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

    # What `--host` (services.xpu-runner.host) accepts: the runner binds an IP address, or the
    # addresses a host name resolves to.
    #   IPv4: four decimal numbers 0-255 without leading zeros (as Rust's Ipv4Addr parses them;
    #         "010.0.0.1" or "127.1" mean other addresses to the C resolver, so both are refused);
    #   IPv6: RFC 4291 text form, optionally in brackets ("::1", "[::1]", "fe80::1", "::ffff:1.2.3.4");
    #   host name: RFC 1123 labels of letters, digits and inner hyphens, at most 253 characters,
    #         whose last label is not all digits (so it cannot be mistaken for an address).
    isIPv4 =
      s:
      let
        octets = match "([0-9]+)[.]([0-9]+)[.]([0-9]+)[.]([0-9]+)" s;
      in
      isString s && octets != null && all (o: match "0|[1-9][0-9]{0,2}" o != null && fromJSON o <= 255) octets;

    # The eight 16-bit groups of an IPv6 address (with or without brackets), or null when `s`
    # is not one.
    ipv6Groups =
      s:
      let
        bare = if match "\\[.*]" s != null then substring 1 (stringLength s - 2) s else s;
        halves = filter isString (builtins.split "::" bare);
        groupsOf = part: if part == "" then [ ] else filter isString (builtins.split ":" part);
        parts = map groupsOf halves;
        texts = concatLists parts;
        # An embedded IPv4 address is two groups, and only allowed at the very end.
        value =
          g:
          if isIPv4 g then
            let
              o = map fromJSON (match "([0-9]+)[.]([0-9]+)[.]([0-9]+)[.]([0-9]+)" g);
            in
            [
              (elemAt o 0 * 256 + elemAt o 1)
              (elemAt o 2 * 256 + elemAt o 3)
            ]
          else if match "[0-9A-Fa-f]{1,4}" g != null then
            [ (hexValue g) ]
          else
            [ null ];
        left = concatLists (map value (head parts));
        right = if length parts == 2 then concatLists (map value (elemAt parts 1)) else [ ];
        known = length left + length right;
        ipv4Misplaced =
          any isIPv4 (if texts == [ ] then [ ] else genList (elemAt texts) (length texts - 1))
          || (texts != [ ] && isIPv4 (lastOf texts) && match ".*::" bare != null);
      in
      if !isString s || match "[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*" bare == null then
        null
      else if length parts > 2 || elem null (left ++ right) || ipv4Misplaced then
        null
      else if length parts == 2 && known <= 7 then
        left ++ genList (_: 0) (8 - known) ++ right
      else if length parts == 1 && known == 8 then
        left
      else
        null;

    isIPv6 = s: ipv6Groups s != null;

    isHostName =
      s:
      let
        labels = filter isString (builtins.split "[.]" s);
      in
      isString s
      && stringLength s <= 253
      && all (l: match "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?" l != null) labels
      && match "[0-9]+" (lastOf labels) == null;

    isHost = s: isIPv4 s || isIPv6 s || isHostName s;

    # Loopback as the runner binds it: 127.0.0.0/8, ::1 (any spelling, with or without
    # brackets), and `localhost`, which resolves to those.
    isLoopbackHost =
      host:
      (isIPv4 host && match "127[.].*" host != null)
      || ipv6Groups host == [ 0 0 0 0 0 0 0 1 ]
      || (isString host && toLower host == "localhost");

    # host:port for a systemd ListenStream=, which takes addresses only (no host names);
    # IPv6 addresses get brackets.
    listenAddress =
      host: port:
      let
        bare = replaceStrings [ "[" "]" ] [ "" "" ] host;
      in
      if isIPv6 host then "[${bare}]:${toString port}" else "${host}:${toString port}";

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

    # Models pinned by hash (`fetchModel`). The hub's default address; a mirror can be given
    # as `endpoint`.
    defaultHubEndpoint = "https://huggingface.co";

    # The download URL of one file of a Hugging Face repository at a revision, as the hub's
    # file-resolve endpoint serves it: `ENDPOINT/OWNER/REPO/resolve/REV/FILE`.
    hubFileUrl =
      {
        repo,
        file,
        rev ? "main",
        endpoint ? defaultHubEndpoint,
      }:
      let
        namePart = "[A-Za-z0-9._-]+";
        badPart = p: p == "" || p == "." || p == "..";
        fileParts = filter isString (builtins.split "/" file);
        revParts = filter isString (builtins.split "/" rev);
      in
      if match "${namePart}/${namePart}" repo == null || any badPart (filter isString (builtins.split "/" repo)) then
        throw "xpu.lib.fetchModel: repo `${repo}` is not OWNER/REPO (letters, digits, `-`, `_`, `.`)"
      else if any badPart fileParts || match ".*[[:space:]?#].*" file != null then
        throw "xpu.lib.fetchModel: file `${file}` is not a path inside the repository (no empty, `.` or `..` parts, spaces, `?` or `#`)"
      else if any badPart revParts || match ".*[[:space:]?#].*" rev != null then
        throw "xpu.lib.fetchModel: rev `${rev}` is not a branch, tag or commit"
      else
        "${endpoint}/${repo}/resolve/${replaceStrings [ "/" ] [ "%2F" ] rev}/${file}";

    # The arguments of nixpkgs' `fetchurl` for a model, from `{ url; hash; }` or
    # `{ repo; file; rev ? "main"; hash; endpoint ? ...; }`. The store name is the file's
    # own name, so the store path ends in e.g. `model-Q4_K_M.gguf`.
    fetchModelArgs =
      args:
      let
        known = [
          "url"
          "repo"
          "file"
          "rev"
          "hash"
          "endpoint"
          "name"
          "tokenEnvVar"
        ];
        unknown = filter (n: !(elem n known)) (attrNames args);
        url =
          if args ? url then
            (if args ? repo || args ? file || args ? rev then throw "xpu.lib.fetchModel: give either url, or repo and file (with rev), not both" else args.url)
          else if args ? repo && args ? file then
            hubFileUrl (builtins.intersectAttrs { repo = null; file = null; rev = null; endpoint = null; } args)
          else
            throw "xpu.lib.fetchModel: give url, or repo and file (with rev), of the model";
        fileName = lastOf (filter isString (builtins.split "/" (head (filter isString (builtins.split "[?#]" url)))));
        stem = match "(.*)[.]gguf" fileName;
      in
      if unknown != [ ] then
        throw "xpu.lib.fetchModel: unknown argument(s) ${concatStringsSep ", " unknown}; known: ${concatStringsSep ", " known}"
      else if !(args ? hash) || args.hash == "" then
        throw "xpu.lib.fetchModel: hash is required (an SRI hash such as \"sha256-...\"; the hub lists each file's sha256)"
      else
        {
          inherit url;
          inherit (args) hash;
          name = args.name or fileName;
          # What the module offers clients as the model's name (`modelId`): the file name
          # without `.gguf`.
          passthru.modelId = if stem == null then fileName else head stem;
        }
        // (if args ? tokenEnvVar then hubTokenArgs args.tokenEnvVar else { });

    # fetchurl arguments that send a Hugging Face token (gated or private files) read at
    # build time from the environment variable `var` of the builder (the Nix daemon's
    # environment on multi-user installs), so the token never enters the store or the
    # derivation: only the variable's name does. nixpkgs' fetchurl passes
    # `netrcImpureEnvVars` into the fixed-output build and runs `netrcPhase` before curl,
    # adding `--netrc-file $PWD/netrc` to its options; the phase writes the header to a
    # file that curl reads (`-H @FILE`), so the token is not on curl's command line either.
    # curl sends such a header only to the first host, not to the CDN it is redirected to.
    hubTokenArgs =
      var:
      if !(isString var) || match "[A-Za-z_][A-Za-z0-9_]*" var == null then
        throw "xpu.lib.fetchModel: tokenEnvVar must be the name of an environment variable, e.g. \"HF_TOKEN\""
      else
        {
          netrcImpureEnvVars = [ var ];
          netrcPhase = ''
            if [ -z "''${${var}:-}" ]; then
              echo "xpu.lib.fetchModel: ${var} is not set in the builder's environment; on a multi-user Nix install set it for nix-daemon (e.g. an EnvironmentFile), see docs/nix.md" >&2
              exit 1
            fi
            printf 'Authorization: Bearer %s\n' "''$${var}" > "$PWD/hub-auth-header"
            : > "$PWD/netrc"
            curlOpts="$curlOpts -H @$PWD/hub-auth-header"
            # fetchurl falls back to the hashed mirrors when the download fails; the
            # header must not go there, so there are none (a blank list).
            NIX_HASHED_MIRRORS=" "
          '';
        };

    # A model file pinned by hash: a fixed-output derivation built with nixpkgs' `fetchurl`.
    #   xpu.lib.fetchModel pkgs { repo = "OWNER/REPO"; file = "m.gguf"; rev = "<commit>"; hash = "sha256-..."; }
    #   xpu.lib.fetchModel pkgs { url = "https://…/m.gguf"; hash = "sha256-..."; }
    fetchModel = pkgs: args: pkgs.fetchurl (fetchModelArgs args);

    # services.xpu-cluster: llama.cpp RPC workers and head (./cluster.nix).
    cluster = import ./cluster.nix self;
  };
in
self
