# A small runner for test sets in nix-unit's shape, using builtins only (Nix 2.8 has no
# nix-unit). Returns { total; failures; } where each failure names the test and shows what it
# expected and what it got. scripts/test-nix.sh fails when `failures` is not empty.
tests:
let
  inherit (builtins) attrNames filter length map tryEval deepSeq;
  run =
    name:
    let
      t = tests.${name};
      attempt = tryEval (deepSeq t.expr t.expr);
    in
    if t.expectedError or false then
      if attempt.success then
        { inherit name; expected = "an evaluation error"; result = attempt.value; }
      else
        null
    else if !attempt.success then
      { inherit name; expected = t.expected; result = "an evaluation error (throw or assert)"; }
    else if attempt.value == t.expected then
      null
    else
      { inherit name; expected = t.expected; result = attempt.value; };
  results = map run (attrNames tests);
in
{
  total = length results;
  failures = filter (r: r != null) results;
}
