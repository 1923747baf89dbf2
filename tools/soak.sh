#!/usr/bin/env bash
# The chaos soak (tests/soak/soak.py) against the ASan+UBSan build:
#   tools/soak.sh [MINUTES [SEED]]     (default 30 minutes, a random seed)
# Builds build-asan if needed. The seed is printed first; the same MINUTES
# and SEED replay the same random choices. Set SLUICE_SOAK_SLUICE to a sluice
# binary to soak another build (e.g. an older commit's build-asan) with this
# tree's driver and model server; SLUICE_SOAK_OUT keeps the access log and
# sluice's stderr there. Ends with one line "N passed, M failed" (one test
# per invariant).
source "$(dirname "$0")/common.sh"
cd "$ROOT"

MINUTES=${1:-30}
SEED=${2:-}

ensure_packages $DEPS_BUILD $DEPS_RUN
build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=23}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export SLUICE_BUILD="$ROOT/build-asan"
args=(--minutes "$MINUTES")
[ -n "$SEED" ] && args+=(--seed "$SEED")
[ -n "${SLUICE_SOAK_SLUICE:-}" ] && args+=(--sluice "$SLUICE_SOAK_SLUICE")
[ -n "${SLUICE_SOAK_OUT:-}" ] && args+=(--out "$SLUICE_SOAK_OUT")
$PY tests/soak/soak.py "${args[@]}"
