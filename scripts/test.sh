#!/usr/bin/env bash
# Runs weft's whole test suite, on a fresh Debian machine with only Rust too. Tests need a
# PostgreSQL server (each test gets a fresh database on it): DATABASE_URL when set, else the
# local server on 127.0.0.1:5432 when it answers, else a private server started here (and
# stopped at the end) with the installed initdb/pg_ctl.
# WEFT_TEST_PRIVATE_PG=1 asks for the private server even when another one answers.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need and this machine lacks is installed first (scripts/setup.sh: as root;
# otherwise the build's needs are checked, and tests that need root are ignored anyway).
command -v cargo >/dev/null || { echo "cargo is not on PATH: install Rust with rustup, then . \"\$HOME/.cargo/env\"" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then scripts/setup.sh test; else scripts/setup.sh build; fi

private_pg=""
cleanup() {
  if [ -n "$private_pg" ]; then
    run_pg "$PGBIN/pg_ctl" -D "$private_pg/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$private_pg"
  fi
}
trap cleanup EXIT

run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${DATABASE_URL:-}" ]; then
  if [ -z "${WEFT_TEST_PRIVATE_PG:-}" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 -U postgres; then
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
  else
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL: set DATABASE_URL or install postgresql" >&2; exit 1; }
    private_pg=$(mktemp -d /tmp/weft-test-pg.XXXXXX)
    chmod 755 "$private_pg"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$private_pg"
    port=55432
    run_pg "$PGBIN/initdb" -D "$private_pg/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
    run_pg "$PGBIN/pg_ctl" -D "$private_pg/data" -l "$private_pg/log" -w \
      -o "-p $port -k $private_pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres
  fi
fi
echo "tests use PostgreSQL at ${DATABASE_URL%%\?*}" >&2

# schemathesis (PyPI) checks the REST API against api/openapi.yaml (crates/weft/tests/
# schemathesis.rs): installed once, in a virtualenv under target/ (nothing outside the tree).
SCHEMATHESIS_VERSION=4.32.5
if [ -z "${WEFT_SCHEMATHESIS:-}" ]; then
  venv=target/tools/schemathesis-$SCHEMATHESIS_VERSION
  if [ ! -x "$venv/bin/st" ]; then
    command -v python3 >/dev/null || { echo "python3 is missing: apt-get install python3 python3-venv" >&2; exit 1; }
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "cannot make a virtualenv: apt-get install python3-venv" >&2; exit 1; }
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2
  fi
  export WEFT_SCHEMATHESIS="$PWD/$venv/bin/st"
fi

# nextest runs each test in its own process under the limits of .config/nextest.toml (a hung
# test is killed and named; lab tests take turns), and the whole run is bounded, so a hang can
# never stall CI for its full time. Where cargo has no nextest, it is built once under target/
# (like schemathesis, nothing outside the tree).
NEXTEST_VERSION=0.9.143
if ! cargo nextest --version >/dev/null 2>&1; then
  tools=target/tools/nextest-$NEXTEST_VERSION
  if [ ! -x "$tools/bin/cargo-nextest" ]; then
    echo "building cargo-nextest $NEXTEST_VERSION under $tools (once)" >&2
    cargo install --locked --quiet --root "$tools" "cargo-nextest@$NEXTEST_VERSION" >&2
  fi
  export PATH="$PWD/$tools/bin:$PATH"
fi
limit=${WEFT_TEST_TIMEOUT:-40m}
# Tests that need root (network namespaces, nftables, raw sockets) are #[ignore]d: run as root,
# they run too; otherwise they are reported as ignored, never as passed.
root=()
if [ "$(id -u)" = 0 ]; then
  root=(--run-ignored all)
else
  echo "not root: the tests that need root are reported as skipped (ignored)" >&2
fi
# Not exec: the EXIT trap still has a private PostgreSQL to stop.
status=0
timeout --kill-after=30s "$limit" cargo nextest run --workspace --all-targets --no-tests=pass "${root[@]}" "$@" || status=$?
exit "$status"
