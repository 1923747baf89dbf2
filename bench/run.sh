#!/usr/bin/env bash
# Benchmark sluice against nginx and HAProxy, side by side, in one run.
# Arguments go to bench.py (e.g. --duration 10 --rounds 3 --variants core,keys).
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD $DEPS_RUN nginx haproxy wrk
build build
exec $PY bench/bench.py "$@"
