#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real processes,
# the same again on a build with AddressSanitizer and UBSan, and a short run
# of every libFuzzer target.
# Ends with one line "N passed, M failed".
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ensure_packages $DEPS_BUILD $DEPS_RUN
ensure_browser
ensure_deploy

passed=0
failed=0
count() {   # count LOG: add a suite's "N passed, M failed" line
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n1)
    if [ -z "$line" ]; then
        failed=$((failed + 1))
        echo "   (suite printed no result line: counted as one failure)"
        return
    fi
    passed=$((passed + $(echo "$line" | awk '{print $1}')))
    failed=$((failed + $(echo "$line" | awk '{print $3}')))
}

unit() {    # unit BUILDDIR
    local log; log=$(mktemp)
    meson test -C "$1" --print-errorlogs >"$log" 2>&1 || true
    cat "$log" | grep -E '^ *[0-9]+/[0-9]+ ' || true
    local ok fail
    ok=$(grep -E '^Ok:' "$log" | awk '{print $2}')
    fail=$(grep -E '^(Fail|Timeout|Unexpected Pass):' "$log" | awk '{s+=$NF} END {print s+0}')
    echo "${ok:-0} passed, ${fail:-1} failed" >"$log.count"
    count "$log.count"
    rm -f "$log" "$log.count"
}

integration() {     # integration BUILDDIR
    local log; log=$(mktemp)
    SLUICE_BUILD="$ROOT/$1" $PY tests/integration/run.py 2>&1 | tee "$log" || true
    count "$log"
    rm -f "$log"
}

echo "== build"
build build
echo "== unit tests"
unit build
echo "== integration tests"
integration build

echo "== build with -fsanitize=address,undefined"
build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export SLUICE_SANITIZED=1
echo "== unit tests (sanitized)"
unit build-asan
echo "== integration tests (sanitized)"
integration build-asan

echo "== fuzzing: every libFuzzer target for ${SLUICE_FUZZ_SECONDS:-12} s (ASan, UBSan)"
fuzz() {
    local log; log=$(mktemp)
    bash "$ROOT/tools/fuzz.sh" "${SLUICE_FUZZ_SECONDS:-12}" 2>&1 | tee "$log" || true
    count "$log"
    rm -f "$log"
}
fuzz

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
