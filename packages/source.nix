# The Rust workspace as a store path: only Cargo.toml, Cargo.lock and the crates, so editing
# Nix files or docs does not rebuild the binaries. The predicate lives in lib/ (tested there);
# lib.cleanSourceWith works on Nix 2.8, unlike lib.fileset.
{ lib }:
lib.cleanSourceWith {
  name = "xpu-source";
  src = ../.;
  filter = (import ../lib).rustSourceFilter ../.;
}
