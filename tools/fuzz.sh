#!/bin/bash
# Run every libFuzzer target for SECONDS each (default 60).
#   tools/fuzz.sh [SECONDS]
# Builds build-fuzz (clang, -Dfuzz=true, ASan+UBSan) if needed. A target is
# tests/fuzz/fuzz_NAME.c listed in tests/fuzz/meson.build with a seed corpus
# in tests/fuzz/corpus/NAME/ (and optionally a libFuzzer dictionary
# tests/fuzz/NAME.dict); every corpus folder is run. New inputs go to
# build-fuzz/fuzz-work/NAME/corpus (the seeds in the repo stay as they are),
# crashes to build-fuzz/fuzz-work/NAME/crashes/. Prints per target the
# executions and the verdict, then "N passed, M failed" (a target passes
# when it found nothing). Exit 1 if any failed.
source "$(dirname "$0")/common.sh"

SECONDS_EACH=${1:-60}
case "$SECONDS_EACH" in
    ''|*[!0-9]*) echo "usage: tools/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac

# shellcheck disable=SC2086
ensure_packages $DEPS_BUILD clang libfuzzer-14-dev libclang-rt-14-dev
BUILD_DIR=build-fuzz
if [ ! -f "$ROOT/$BUILD_DIR/build.ninja" ]; then
    CC=clang meson setup "$ROOT/$BUILD_DIR" "$ROOT" -Dfuzz=true \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -j2 -C "$ROOT/$BUILD_DIR" >/dev/null

# Undefined behaviour is a finding, not a warning.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

passed=0
failed=0
for dir in "$ROOT"/tests/fuzz/corpus/*/; do
    name=$(basename "$dir")
    bin="$ROOT/$BUILD_DIR/tests/fuzz/fuzz_$name"
    work="$ROOT/$BUILD_DIR/fuzz-work/$name"
    if [ ! -x "$bin" ]; then
        echo "fuzz_$name: no binary (is it listed in tests/fuzz/meson.build?)"
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$work/corpus" "$work/crashes"
    dict=()
    [ -f "$ROOT/tests/fuzz/$name.dict" ] && dict=(-dict="$ROOT/tests/fuzz/$name.dict")
    log="$work/last.log"
    rc=0
    # stdin from /dev/null: a fuzzed "file:/dev/stdin" secret must not block.
    "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/crashes/" "${dict[@]}" \
        "$work/corpus" "$dir" </dev/null >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ] && ! grep -q "^==[0-9]*==ERROR\|runtime error:\|^SUMMARY:" "$log"; then
        echo "fuzz_$name: ${execs:-?} executions in ${SECONDS_EACH}s, nothing found"
        passed=$((passed + 1))
    else
        crash=$(sed -n 's/^artifact_prefix=.*; Test unit written to //p' "$log" | tail -1)
        echo "fuzz_$name: ${execs:-?} executions, FOUND a problem (exit $rc): ${crash:-see $log}"
        grep -m3 "ERROR\|runtime error:\|SUMMARY:" "$log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
