#!/usr/bin/env bash
# Tests of the Nix side (flake, lib/, modules, templates) that run without nixpkgs and without
# network, on Debian's nix-bin 2.8. scripts/test.sh runs it; docs/nix.md lists what runs where.
#
#   NIXPKGS_LIB=<nixpkgs>/lib  also runs the lib.evalModules module tests and evaluates the flake
#                              against a stand-in nixpkgs built around that lib/.
#   XPU_TEST_MODEL=<gguf>      the default model, to cross-check packages/default-model.nix
#                              (scripts/fetch-model.sh provides it when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters ='
# lib.warn aborts instead of printing (the abort-on-warn setting is unknown to Nix 2.8).
export NIX_ABORT_ON_WARN=1

fail() { echo "test-nix: FAIL: $*" >&2; exit 1; }
pass() { echo "test-nix: ok: $*" >&2; }
skip() { echo "test-nix: SKIPPED: $*" >&2; }

command -v nix-instantiate >/dev/null || fail "nix-instantiate not found; install Debian's nix-bin (scripts/apt-packages.txt lists it)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs a test set (nix-unit shape) through tests/nix/run-tests.nix and fails on any failure.
run_test_set() {
    local label=$1 expr=$2 out
    out=$(nix-instantiate --eval --strict --json -E "$expr") || fail "$label: evaluation failed"
    python3 - "$label" "$out" <<'PY' || exit 1
import json, sys
label, result = sys.argv[1], json.loads(sys.argv[2])
if result["total"] == 0:
    sys.exit(f"test-nix: FAIL: {label}: no tests ran")
for f in result["failures"]:
    print(f"test-nix: FAIL: {label}: {f['name']}\n  expected: {json.dumps(f['expected'])}\n  got:      {json.dumps(f['result'])}", file=sys.stderr)
if result["failures"]:
    sys.exit(f"test-nix: FAIL: {label}: {len(result['failures'])} of {result['total']} failed")
print(f"test-nix: ok: {label}: {result['total']} tests passed", file=sys.stderr)
PY
}

# Expects evaluating $2 to fail with a message matching the regex $3.
expect_eval_error() {
    local label=$1 expr=$2 regex=$3 err
    if err=$(nix-instantiate --eval --strict -E "$expr" 2>&1); then
        fail "$label: evaluation succeeded, expected an error matching /$regex/"
    fi
    grep -Eq "$regex" <<<"$err" || fail "$label: error does not match /$regex/:\n$err"
    pass "$label"
}

# 1. Every .nix file parses.
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
[ ${#nix_files[@]} -gt 0 ] || fail "no .nix files found"
for f in "${nix_files[@]}"; do
    nix-instantiate --parse "$f" >/dev/null || fail "$f does not parse"
done
pass "${#nix_files[@]} .nix files parse"

# 2. Pure functions of lib/.
run_test_set "lib tests" "import ./tests/nix/run-tests.nix (import ./tests/nix/lib-tests.nix)"
run_test_set "cluster lib tests" "import ./tests/nix/run-tests.nix (import ./tests/nix/cluster-lib-tests.nix)"

# 2b. xpu.lib.fetchModel's token for gated files: run the fetchurl phase it adds, as
# nixpkgs' fetchurl builder would (in the build directory, then curl with $curlOpts and the
# netrc file), against a local server that reports the request's headers. The token must
# arrive as a bearer header and appear in no argument of curl; without the variable the
# phase stops with a message that names it.
token_phase=$(nix-instantiate --eval --json -E \
    '((import ./lib).fetchModelArgs { url = "http://127.0.0.1/m.gguf"; hash = "sha256-A"; tokenEnvVar = "XPU_TEST_HUB_TOKEN"; }).netrcPhase' \
    2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin))')
mkdir "$work/fetch"
python3 - "$work/fetch/port" >"$work/fetch/headers" <<'PY' &
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.headers.get("Authorization"), flush=True)
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.handle_request()
PY
echo_server=$!
for _ in $(seq 50); do [ -s "$work/fetch/port" ] && break; sleep 0.1; done
(
    cd "$work/fetch"
    export XPU_TEST_HUB_TOKEN=hf_secret
    curlOpts=""
    eval "$token_phase"
    case "$curlOpts" in *hf_secret*) echo "the token is on curl's command line: $curlOpts" >&2; exit 1 ;; esac
    [ "$NIX_HASHED_MIRRORS" = " " ] || { echo "hashed mirrors left on" >&2; exit 1; }
    # shellcheck disable=SC2086 # word splitting as fetchurl's builder does
    curl --silent --fail $curlOpts --netrc-file "$PWD/netrc" -o body "http://127.0.0.1:$(cat port)/m.gguf"
) || fail "fetchModel token phase did not run"
wait "$echo_server"
[ "$(cat "$work/fetch/headers")" = "Bearer hf_secret" ] \
    || fail "fetchModel token: the server saw Authorization '$(cat "$work/fetch/headers")', expected 'Bearer hf_secret'"
if out=$(cd "$work/fetch" && env -u XPU_TEST_HUB_TOKEN bash -c "curlOpts=; $token_phase" 2>&1); then
    fail "fetchModel token phase ran without the variable"
fi
grep -q "XPU_TEST_HUB_TOKEN is not set" <<<"$out" || fail "fetchModel token: unclear message without the variable: $out"
pass "fetchModel sends the token from the builder's environment as a bearer header"

# 3. The messages users see for broken facts files.
expect_eval_error "text facts file" "(import ./lib).readFacts ./tests/nix/fixtures/facts-text-format.json" \
    "facts-text-format.json is not a JSON object .*xpu-probe -o facts.json"
expect_eval_error "truncated facts file" "(import ./lib).readFacts ./tests/nix/fixtures/facts-truncated.json" \
    "facts-truncated.json does not end with '\}'"
printf '' > "$work/empty.json"
expect_eval_error "empty facts file" "(import ./lib).readFacts $work/empty.json" "empty.json is empty"
expect_eval_error "unknown variant" "(import ./lib).variantAcceleration \"exo-rocm\"" \
    "unknown variant 'exo-rocm'; expected one of: exo-intel, exo-cuda, exo-cpu"
# A large facts file (many PCI functions) must not hit std::regex's recursion limit.
python3 - "$work/big.json" <<'PY'
import json, sys
facts = json.load(open("tests/nix/fixtures/facts-intel-dgpu.json"))
facts["pci"] = [dict(facts["pci"][0], address=f"0000:{i // 32:02x}:{i % 32:02x}.0") for i in range(3000)]
json.dump(facts, open(sys.argv[1], "w"), indent=2)
PY
[ "$(nix-instantiate --eval -E "(import ./lib).recommendedVariant ((import ./lib).readFacts $work/big.json)")" = '"exo-intel"' ] \
    || fail "a $(stat -c %s "$work/big.json")-byte facts file was not read"
pass "large facts file ($(stat -c %s "$work/big.json") bytes)"

# Environment= lines as lib/ quotes them (the Home Manager unit's) read back by systemd itself:
# `systemd --test` loads a unit and dumps its parsed settings. It refuses to run as root, so
# root runs it as nobody; machines without systemd skip this.
systemd_bin=$(command -v /lib/systemd/systemd /usr/lib/systemd/systemd 2>/dev/null | head -n1 || true)
if [ -z "$systemd_bin" ]; then
    skip "Environment= quoting against systemd: no systemd binary on this machine"
else
    env_dir="$work/units"
    mkdir -p "$env_dir"
    env_case=$(nix-instantiate --eval --strict --json -E '
      let
        env = {
          TRICKY = "two words \"quoted\" back\\slash $HOME \ttab é";
          RUST_LOG = "xpu_runner=debug,tower_http=info";
        };
      in {
        lines = (import ./lib).systemdEnvironment env;
        expected = map (n: "${n}=${env.${n}}") (builtins.attrNames env);
      }') || fail "lib.systemdEnvironment does not evaluate"
    python3 - "$env_case" "$env_dir/xpu-env-check.service" <<'PY'
import json, sys
case = json.loads(sys.argv[1])
lines = case["lines"]
with open(sys.argv[2], "w") as unit:
    unit.write("[Service]\nExecStart=/bin/true\n" + "".join(f"Environment={l}\n" for l in lines))
PY
    chmod 755 "$work" "$env_dir"
    chmod 644 "$env_dir/xpu-env-check.service"
    run_as=()
    [ "$(id -u)" -eq 0 ] && run_as=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    env -i HOME=/nonexistent SYSTEMD_UNIT_PATH="$env_dir:" "${run_as[@]}" "$systemd_bin" --test --system \
        --unit=xpu-env-check.service --no-pager >"$work/systemd-dump.txt" 2>/dev/null \
        || fail "systemd --test could not load the Environment= check unit"
    python3 - "$env_case" "$work/systemd-dump.txt" <<'PY' || exit 1
import json, re, sys
case, dump = json.loads(sys.argv[1]), open(sys.argv[2], encoding="utf-8").read()
unit = dump.split("-> Unit xpu-env-check.service:", 1)[1].split("-> Unit ", 1)[0]
got = sorted(re.findall(r"^\t\tEnvironment: (.*)$", unit, re.M))
want = sorted(case["expected"])
if got != want:
    sys.exit(f"test-nix: FAIL: systemd reads the Environment= lines as\n  {got}\nnot\n  {want}")
PY
    pass "Environment= quoting: systemd $("$systemd_bin" --version | head -n1 | cut -d' ' -f2) reads back $(grep -c '^Environment=' "$env_dir/xpu-env-check.service") assignments whole"
fi

# The VM tests' Python scripts compile (the NixOS test driver runs them where KVM exists).
for vm in checks/vm-*.nix; do
    nix-instantiate --eval --strict --json -E "(import ./$vm { self = null; fixture = x: x; }).testScript" \
        | python3 -c 'import json, sys; compile(json.load(sys.stdin), sys.argv[1], "exec")' "$vm" \
        || fail "$vm: the test script is not valid Python"
done
pass "VM test scripts compile"

# 4. The default model's hash is that of the model the tests use.
model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
want=$(sed -n 's/.*outputHash = "\([0-9a-f]\{64\}\)".*/\1/p' packages/default-model.nix)
[ -n "$want" ] || fail "packages/default-model.nix has no sha256 outputHash"
got=$(sha256sum "$model" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "packages/default-model.nix says $want, the model $model has $got"
pass "default-model sha256 matches $model"

# 5. The contract with the probe: facts that xpu-probe writes on this machine pass the
#    modules' validation, in JSON and in its Nix rendering, and both say the same.
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet -p xpu-probe || fail "cargo build -p xpu-probe"
probe="$target_dir/release/xpu-probe"
[ -x "$probe" ] || fail "$probe was not built"
"$probe" --no-level-zero --format json -o "$work/host-facts.json" || fail "xpu-probe --format json"
"$probe" --no-level-zero --format nix -o "$work/host-facts.nix" || fail "xpu-probe --format nix"
run_test_set "facts of this machine" "let
  x = import ./lib;
  json = x.readFacts $work/host-facts.json;
  nix = x.readFacts $work/host-facts.nix;
in import ./tests/nix/run-tests.nix {
  testJsonValid = { expr = x.factsErrors json; expected = [ ]; };
  testNixValid = { expr = x.factsErrors nix; expected = [ ]; };
  testSameVariant = { expr = x.recommendedVariant nix; expected = x.recommendedVariant json; };
  testSameRecommendation = { expr = nix.recommendation; expected = json.recommendation; };
  testKnownVariant = { expr = builtins.elem (x.recommendedVariant json) x.variants; expected = true; };
}"
# The probe's own fixture trees (captured sysfs/proc of real machines) through the same path.
probe_cases=0
for tree in probe/tests/fixtures/*/; do
    name=$(basename "$tree")
    "$probe" --root "$tree" --no-level-zero --format json -o "$work/probe-$name.json" 2>/dev/null \
        || fail "xpu-probe --root $tree"
    case $name in
        arc-b580-xe | arc-a770-igpu | max-1550) want='"exo-intel"' ;;
        h100) want='"exo-cuda"' ;;
        virtio-vm | aspeed-only | mi300x) want='"exo-cpu"' ;;
        *) want=null ;;
    esac
    run_test_set "probe fixture $name" "let
  x = import ./lib;
  f = x.readFacts $work/probe-$name.json;
  v = x.recommendedVariant f;
in import ./tests/nix/run-tests.nix ({
  testValid = { expr = x.factsErrors f; expected = [ ]; };
  testDevicesFollowVariant = {
    expr = (x.deviceAccess { acceleration = x.variantAcceleration v; facts = f; }).PrivateDevices;
    expected = v == \"exo-cpu\";
  };
  testKernelParamsAreForceProbe = {
    expr = builtins.all x.isForceProbeParam (x.kernelParams { facts = f; variant = v; });
    expected = true;
  };
} // (if $want == null then { } else { testVariant = { expr = v; expected = $want; }; }))"
    probe_cases=$((probe_cases + 1))
done
[ "$probe_cases" -ge 3 ] || fail "expected the probe's fixture trees under probe/tests/fixtures, found $probe_cases"

echo "test-nix: this machine: $(nix-instantiate --eval -E "(import ./lib).recommendedVariant ((import ./lib).readFacts $work/host-facts.json)")" >&2

# 6. Templates: `nix flake init -t` into a temporary directory, then everything parses.
mapfile -t templates < <(nix-instantiate --eval --json -E 'builtins.attrNames (import ./templates)' | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')
for t in "${templates[@]}"; do
    dir="$work/template-$t"
    mkdir -p "$dir"
    (cd "$dir" && nix flake init -t "$repo#$t" >"$work/init.log" 2>&1) || { cat "$work/init.log" >&2; fail "nix flake init -t .#$t"; }
    [ -f "$dir/flake.nix" ] || fail "template $t has no flake.nix"
    while IFS= read -r -d '' f; do
        nix-instantiate --parse "$f" >/dev/null || fail "template $t: $f does not parse"
    done < <(find "$dir" -name '*.nix' -print0)
    for f in $(find "$dir" -name '*.json'); do
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" || fail "template $t: $f is not JSON"
    done
done
[ ${#templates[@]} -ge 2 ] || fail "expected at least two templates, found ${#templates[@]}"
# The placeholder facts of the host template are valid facts that warn until replaced.
run_test_set "template facts" "let x = import ./lib; f = x.readFacts ./templates/nixos-host/facts.json; in import ./tests/nix/run-tests.nix {
  testValid = { expr = x.factsErrors f; expected = [ ]; };
  testWarns = { expr = builtins.length f.warnings; expected = 1; };
}"
pass "templates: ${templates[*]}"

# 7. Module tests with lib.evalModules, and the flake against a stand-in nixpkgs.
if [ -z "${NIXPKGS_LIB:-}" ]; then
    skip "module tests and flake evaluation: set NIXPKGS_LIB to the lib/ directory of nixpkgs (e.g. a checkout of nix-community/nixpkgs.lib) to run them"
    exit 0
fi
[ -f "$NIXPKGS_LIB/default.nix" ] || fail "NIXPKGS_LIB=$NIXPKGS_LIB is not nixpkgs' lib/ (no default.nix)"
lib_abs=$(cd "$NIXPKGS_LIB" && pwd)
run_test_set "module tests" "import ./tests/nix/run-tests.nix (import ./tests/nix/module-tests.nix { lib = import $lib_abs; })"
run_test_set "cluster module tests" "import ./tests/nix/run-tests.nix (import ./tests/nix/cluster-module-tests.nix { lib = import $lib_abs; })"
# The message a user sees for a host the runner cannot bind says what to write.
expect_eval_error "host with a port" "let lib = import $lib_abs; in (lib.evalModules { modules = [
    (import ./tests/nix/stubs/nixos-options.nix { })
    ./modules/nixos/default.nix
    { _module.args.pkgs = import ./tests/nix/stubs/pkgs.nix { }; services.xpu-runner = { enable = true; host = \"127.0.0.1:8080\"; }; }
  ]; }).config.systemd.services.xpu-runner.environment" \
    "services.xpu-runner.host' is not of type .IP address or host name, e.g. \"127.0.0.1\", \"::1\", \"0.0.0.0\", \"::\" or \"localhost\" \(no port: set services.xpu-runner.port\)"

stand_in="$work/stand-in-nixpkgs"
cp -r tests/nix/stand-in-nixpkgs "$stand_in"
cp -r "$lib_abs" "$stand_in/lib"
cp -r tests/nix/stubs "$stand_in/stubs"
override=(--override-input nixpkgs "path:$stand_in")

nix flake show "${override[@]}" . >"$work/show.log" 2>&1 || { cat "$work/show.log" >&2; fail "nix flake show"; }
nix flake check --no-build "${override[@]}" . >"$work/check.log" 2>&1 || { cat "$work/check.log" >&2; fail "nix flake check --no-build (stand-in nixpkgs)"; }
pass "nix flake show / check --no-build against the stand-in nixpkgs"

flake_eval() { nix eval --json "${override[@]}" "$@" 2>"$work/eval.log" || { cat "$work/eval.log" >&2; fail "nix eval $*"; }; }
packages=$(flake_eval .#packages.x86_64-linux --apply 'ps: builtins.mapAttrs (n: p: {
  acceleration = p.passthru.acceleration or null;
  mainProgram = p.meta.mainProgram or null;
  hasDescription = (p.meta.description or "") != "";
  features = p.standInArgs.buildFeatures or [ ];
  postFixup = p.standInArgs.postFixup or "";
  postBuild = p.standInArgs.postBuild or "";
  postInstall = p.standInArgs.postInstall or "";
  outputHash = p.standInArgs.outputHash or null;
}) ps')
apps=$(flake_eval .#apps.x86_64-linux --apply 'as: builtins.mapAttrs (n: a: { inherit (a) type program; }) as')
overlay=$(flake_eval .#overlays.default --apply 'o: builtins.attrNames (o { } { })')
python3 - "$packages" "$apps" "$overlay" <<'PY' || exit 1
import json, sys
packages, apps, overlay = (json.loads(a) for a in sys.argv[1:4])
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)
for name, acc, feats in [("exo-cpu", "cpu", []), ("exo-intel", "intel", ["vulkan"]), ("exo-cuda", "cuda", ["vulkan"]), ("runner", "cpu", [])]:
    p = packages[name]
    check(p["acceleration"] == acc, f"{name}: passthru.acceleration is {p['acceleration']!r}, want {acc!r}")
    check(p["mainProgram"] == "xpu-runner", f"{name}: meta.mainProgram is {p['mainProgram']!r}")
    check(p["features"] == feats, f"{name}: cargo features {p['features']}, want {feats}")
intel = packages["exo-intel"]["postFixup"]
for needle in ["ZES_ENABLE_SYSMAN 1", "vulkan-loader", "level-zero", "/run/opengl-driver/lib", "LD_LIBRARY_PATH"]:
    check(needle in intel, f"exo-intel: the wrapper does not mention {needle!r}")
cuda = packages["exo-cuda"]
check("--features cuda" in cuda["postBuild"], "exo-cuda: xpu-runner-cuda is not built with the cuda feature")
check("bin/xpu-runner-cuda" in cuda["postInstall"], "exo-cuda: xpu-runner-cuda is not installed next to xpu-runner")
check("LD_LIBRARY_PATH" in cuda["postFixup"], "exo-cuda: xpu-runner is not wrapped for the Vulkan loader")
check(packages["probe"]["mainProgram"] == "xpu-probe", "probe: meta.mainProgram")
check(packages["default-model"]["outputHash"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "default-model: outputHash")
for name, p in packages.items():
    check(p["hasDescription"], f"{name}: no meta.description")
for name in ["runner", "runner-intel", "probe", "default"]:
    check(apps[name]["type"] == "app", f"apps.{name}: not an app")
check(apps["runner"]["program"].endswith("/bin/xpu-runner-default"), f"apps.runner: {apps['runner']['program']}")
check(apps["probe"]["program"].endswith("/bin/xpu-probe"), f"apps.probe: {apps['probe']['program']}")
check(sorted(overlay) == sorted(["xpu-probe", "exo-cpu", "exo-intel", "exo-cuda", "xpu-default-model"]), f"overlay names: {overlay}")
if errors:
    sys.exit("test-nix: FAIL: flake outputs:\n  " + "\n  ".join(errors))
print(f"test-nix: ok: flake outputs: {len(packages)} packages, {len(apps)} apps, overlay {sorted(overlay)}", file=sys.stderr)
PY
# The templates evaluate: the NixOS host (placeholder facts, our module, the stand-in's
# nixosSystem, which fails on assertions) and the development shell.
for t in nixos-host dev; do
    dir="$work/eval-$t"
    mkdir -p "$dir"
    cp -r templates/$t/. "$dir/"
    case $t in
        nixos-host) attr=nixosConfigurations.llm-host.config.system.build.toplevel.drvPath ;;
        dev) attr=devShells.x86_64-linux.default.drvPath ;;
    esac
    (cd "$dir" && nix eval --raw "${override[@]}" --override-input xpu "git+file://$repo" ".#$attr" >"$work/template-eval.log" 2>&1) \
        || { cat "$work/template-eval.log" >&2; fail "template $t does not evaluate"; }
done
pass "templates nixos-host and dev evaluate against the stand-in nixpkgs"

# The three-host cluster flake of docs/cluster.md evaluates, with fixture facts for its hosts.
dir="$work/cluster-flake"
mkdir -p "$dir"
python3 - docs/cluster.md "$dir/flake.nix" <<'PY' || exit 1
import re, sys
blocks = re.findall(r"```nix\n(.*?)```", open(sys.argv[1]).read(), re.S)
flakes = [b for b in blocks if "nixosConfigurations" in b]
if len(flakes) != 1:
    sys.exit(f"test-nix: FAIL: docs/cluster.md has {len(flakes)} nix blocks with nixosConfigurations, expected 1")
open(sys.argv[2], "w").write(flakes[0])
PY
for host in head:cpu gpu-intel:intel-dgpu gpu-nvidia:nvidia; do
    name=${host%%:*}
    mkdir -p "$dir/$name"
    cp "tests/nix/fixtures/facts-${host#*:}.json" "$dir/$name/facts.json"
    # What nixos-generate-config writes, in short.
    echo '{ nixpkgs.hostPlatform = "x86_64-linux"; boot.loader.grub.enable = false; fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; }; }' \
        >"$dir/$name/hardware-configuration.nix"
done
for name in head gpu-intel gpu-nvidia; do
    (cd "$dir" && nix eval --raw "${override[@]}" --override-input xpu "git+file://$repo" \
        ".#nixosConfigurations.$name.config.system.build.toplevel.drvPath" >"$work/cluster-eval.log" 2>&1) \
        || { cat "$work/cluster-eval.log" >&2; fail "the cluster flake of docs/cluster.md: $name does not evaluate"; }
done
pass "the three-host cluster flake of docs/cluster.md evaluates against the stand-in nixpkgs"

# The app serves the default model on 127.0.0.1:52415 when run without arguments.
app=$(nix-instantiate --eval --strict --json -E "
  let
    lib = import $lib_abs;
    fake = name: { type = \"derivation\"; outPath = \"/nix/store/00000000000000000000000000000000-\${name}\"; meta = { mainProgram = \"xpu-runner\"; description = \"d\"; }; };
    apps = import ./packages/apps.nix {
      inherit lib;
      writeShellScriptBin = name: text: { inherit name text; overrideAttrs = f: { inherit name text; meta = (f { meta = { }; }).meta; }; };
      exo-cpu = fake \"exo-cpu\";
      exo-intel = fake \"exo-intel\";
      xpu-default-model = fake \"model.gguf\" // { modelId = \"SmolLM2-135M-Instruct\"; };
    };
  in apps.runner.text") || fail "packages/apps.nix does not evaluate"
for needle in '--host 127.0.0.1' '--port 52415' 'exo-cpu/bin/xpu-runner \"$@\"' 'model.gguf' 'if [ \"$#\" -eq 0 ]'; do
    grep -qF -- "$needle" <<<"$app" || fail "apps.runner script lacks: $needle"
done
pass "apps.runner serves the default model on 127.0.0.1:52415 without arguments"
pass "all Nix tests"
