#!/usr/bin/env bash
# Instructions per request for each sluice variant, under callgrind.
# Arguments go to callgrind.py (e.g. --requests 1000 --variants core,keys).
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD $DEPS_RUN valgrind
build build
exec $PY bench/callgrind.py "$@"
