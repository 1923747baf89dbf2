# Shared by demo.sh, test.sh and bench/run.sh: install what is missing,
# build, pick free ports, stop what was started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=/usr/bin/python3
PIDS=()

# Debian packages the build, tests, demo and bench need.
DEPS_BUILD="build-essential clang meson ninja-build pkg-config libevent-dev libssl-dev
  libjwt-dev libjansson-dev libhiredis-dev node-llhttp libsystemd-dev libcurl4-openssl-dev
  libnghttp2-dev"
DEPS_RUN="redis-server redis-sentinel curl openssl python3 python3-requests python3-redis python3-prometheus-client procps wrk e2fsprogs
  nghttp2-client python3-h2 python3-grpcio protobuf-compiler protobuf-compiler-grpc python3-protobuf"

# The dashboard's browser test: Debian's Chromium, Node.js and playwright-core.
ensure_browser() {
    ensure_packages chromium
    command -v node >/dev/null 2>&1 || ensure_packages nodejs npm
    if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
        (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

# The deployment files' tests (tests/integration/test_deploy.py): Node.js
# with kubernetes-models and yaml (tests/deploy), systemd-analyze (package
# systemd; installing it starts nothing here), HAProxy (the route to the
# Redis primary) and apt's package lists (apt-cache show).
ensure_deploy() {
    ensure_packages systemd haproxy
    command -v node >/dev/null 2>&1 || ensure_packages nodejs npm
    if [ ! -d "$ROOT/tests/deploy/node_modules/kubernetes-models" ] \
       || [ ! -d "$ROOT/tests/deploy/node_modules/yaml" ] \
       || [ ! -d "$ROOT/tests/deploy/node_modules/@kubernetes-models/prometheus-operator" ]; then
        (cd "$ROOT/tests/deploy" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    if ! apt-cache show --no-all-versions libjwt0 >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] && apt-get update -q >/dev/null
    fi
}

ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing: ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing packages and not root: ${missing[*]}" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        # Debian starts services on install; the project starts its own. A
        # policy-rc.d that says "no" (exit 101) keeps invoke-rc.d and
        # deb-systemd-invoke from starting any, so nothing has to be stopped
        # afterwards: a server the machine already ran is never touched.
        local policy=/usr/sbin/policy-rc.d own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            own_policy=1
        fi
        local rc=0
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
        [ "$own_policy" -eq 1 ] && rm -f "$policy"
        [ "$rc" -eq 0 ] || { echo "apt-get install failed ($rc)" >&2; exit "$rc"; }
    fi
}

build() {   # build DIR [meson options...]
    local dir=$1; shift
    if [ ! -f "$ROOT/$dir/build.ninja" ]; then
        meson setup "$ROOT/$dir" "$ROOT" "$@" >/dev/null
    fi
    ninja -C "$ROOT/$dir" >/dev/null
}

# A port below the kernel's ephemeral range (no client socket can be given
# it), test-bound, and claimed for this shell's PID in /tmp/sluice-ports so
# that no later call, and no concurrent test run, hands it out again while
# this shell lives. Same allocator as the integration harness.
free_port() {
    $PY -c 'import sys; sys.path.insert(0, sys.argv[1]); import harness
print(harness.free_port(owner=int(sys.argv[2])))' "$ROOT/tests/integration" "$$"
}

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    return 1
}

spawn() {   # spawn LOGFILE CMD...: run in the background, remember the PID
    local log=$1; shift
    "$@" >"$log" 2>&1 &
    PIDS+=($!)
}

stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
