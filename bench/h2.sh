#!/usr/bin/env bash
# HTTP/2 and gRPC benchmark: h2load against the model server alone, nginx
# and HAProxy (sluice too with --sluice: auth, split and Redis metrics on). Arguments
# go to bench/h2.py (e.g. --duration 10 --rounds 3 --evhttp-model).
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD $DEPS_RUN nginx haproxy
build build
exec $PY bench/h2.py "$@"
