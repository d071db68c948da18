#!/usr/bin/env bash
# The yelb walk-through (shared/seed/use-case-4-network-policies.txt) on this machine, from a
# fresh Debian machine with only Rust: installs what is missing (scripts/setup.sh demo), builds
# weft, then runs `weft demo yelb`. As root: the lab's network namespaces and nftables need it.
# Arguments go to `weft demo yelb` (--keep leaves the stack running to explore).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh needs root (network namespaces, nftables): run it as root" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "cargo is not on PATH: install Rust with rustup, then . \"\$HOME/.cargo/env\"" >&2; exit 1; }
scripts/setup.sh demo
cargo build --release --locked --package weft --package weft-cni
exec ./target/release/weft demo yelb "$@"
