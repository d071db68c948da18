#!/usr/bin/env bash
# Installs, on Debian, what weft's build, demo or tests need and this machine lacks: the one
# place that names the packages. scripts/demo.sh, scripts/test.sh and .ci/run call it, so CI
# walks the path a newcomer walks. The weft binary itself never installs anything.
#
#   scripts/setup.sh build   a C compiler, its C library headers and make: Rust links with cc,
#                            and ring (TLS) compiles C
#   scripts/setup.sh demo    build, and what `weft demo yelb` runs: ip (iproute2) for the lab's
#                            namespaces, PostgreSQL's server binaries for its private database
#   scripts/setup.sh test    demo, and what the tests use besides: pg_isready, nft and conntrack
#                            (tests read the kernel's table and connections with them to
#                            compare), kill (procps), python3 with venv (schemathesis),
#                            docker-compose (validates docker-compose.yml), and a container
#                            runtime for the CNI plugin's test: containerd (which a test starts
#                            privately, with its own sockets and directories), runc, the
#                            reference CNI plugins (loopback; portmap, for hostPort, with
#                            iptables, which it runs in a test's own namespace) and
#                            busybox-static (its pause image); chromium and chromium-driver
#                            (the traffic-groups page's test drives a headless browser)
#
# Needs root to install; without it, it names what is missing and the command that installs it.
set -euo pipefail

what=${1:-test}
case "$what" in build | demo | test) ;; *)
  echo "usage: scripts/setup.sh build|demo|test" >&2
  exit 2
  ;;
esac

missing=()
# want PROGRAM PACKAGE: PACKAGE when PROGRAM is not an executable on PATH (a shell builtin of
# that name does not count: the tests start the program).
want() { [ -n "$(type -P "$1")" ] || missing+=("$2"); }

want cc gcc
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
want make make
if [ "$what" != build ]; then
  want ip iproute2
  want runuser util-linux
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ "$what" = test ]; then
  want pg_isready postgresql-client
  want nft nftables
  want conntrack conntrack
  want kill procps
  want python3 python3
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  want docker-compose docker-compose
  want containerd containerd
  want runc runc
  [ -e /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
  [ -e /usr/lib/cni/portmap ] || missing+=(containernetworking-plugins)
  want iptables iptables
  [ -e /bin/busybox ] || missing+=(busybox-static)
  want chromium chromium
  want chromedriver chromium-driver
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# One package may be named twice (gcc for cc and for its headers); apt takes each once.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
