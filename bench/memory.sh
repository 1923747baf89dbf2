#!/usr/bin/env bash
# Memory per connection, sluice vs nginx vs HAProxy: idle keep-alive
# connections and non-reading pipelining clients.
# Arguments go to memory.py (e.g. --idle-connections 5000 --attack-connections 200).
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD $DEPS_RUN nginx haproxy
build build
exec $PY bench/memory.py "$@"
