#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real processes,
# the same again on a build with AddressSanitizer and UBSan, a 3-minute chaos
# soak on that build, and a short run of every libFuzzer target.
# Ends with one line "N passed, M failed".
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ensure_packages $DEPS_BUILD $DEPS_RUN libfuzzer-14-dev libclang-rt-14-dev
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

unit_run() {    # unit_run BUILDDIR LOG: the unit tests, their output in LOG
    meson test -C "$1" --print-errorlogs >"$2" 2>&1 || true
}

unit_report() {     # unit_report LOG: print and count a unit_run's output
    local log=$1
    cat "$log" | grep -E '^ *[0-9]+/[0-9]+ ' || true
    local ok fail
    ok=$(grep -E '^Ok:' "$log" | awk '{print $2}')
    fail=$(grep -E '^(Fail|Timeout|Unexpected Pass):' "$log" | awk '{s+=$NF} END {print s+0}')
    echo "${ok:-0} passed, ${fail:-1} failed" >"$log.count"
    count "$log.count"
    rm -f "$log" "$log.count"
}

integration() {     # integration BUILDDIR LOG [ENV...]: one pass, its output in LOG
    local dir=$1 log=$2; shift 2
    env "$@" SLUICE_BUILD="$ROOT/$dir" $PY tests/integration/run.py >"$log" 2>&1 || true
}

echo "== build (at ${SECONDS}s)"
build build
echo "== build with -fsanitize=address,undefined (at ${SECONDS}s)"
build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
SAN_ENV=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23
         UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 SLUICE_SANITIZED=1)
# The fuzz targets' build (clang) goes on in the background, at a lower
# priority, while the tests below mostly wait on timers.
fuzz_build_log=$(mktemp)
( if [ ! -f "$ROOT/build-fuzz/build.ninja" ]; then
      CC=clang meson setup "$ROOT/build-fuzz" "$ROOT" -Dfuzz=true \
          -Db_sanitize=address,undefined -Db_lundef=false
  fi && nice -n 10 ninja -j2 -C "$ROOT/build-fuzz" ) >"$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!
echo "== unit tests, plain and sanitized side by side (at ${SECONDS}s)"
unit_plain=$(mktemp); unit_san=$(mktemp)
unit_run build "$unit_plain" &
p1=$!
env "${SAN_ENV[@]}" bash -c 'meson test -C "$1" --print-errorlogs >"$2" 2>&1 || true' _ \
    build-asan "$unit_san" &
p2=$!
wait "$p1" "$p2"
echo "== unit tests"
unit_report "$unit_plain"
echo "== unit tests (sanitized)"
unit_report "$unit_san"
rm -f "$unit_plain" "$unit_san"

# The two integration passes run side by side: their tests mostly wait on
# timers and on other processes, and the harness's ports are claimed across
# concurrent runs. Each pass's lines are printed whole, in order, after it.
# Each pass is shared between two runners (SLUICE_SHARD), so four run at
# once: the suite's wall time is mostly waiting (on timers, on the other
# processes), not CPU.
SHARDS=${SLUICE_SHARDS:-2}
logs=(); pids=(); names=()
for k in $(seq 1 "$SHARDS"); do
    log=$(mktemp); logs+=("$log"); names+=("integration tests (shard $k/$SHARDS)")
    integration build "$log" SLUICE_SHARD="$k/$SHARDS" &
    pids+=($!)
    log=$(mktemp); logs+=("$log"); names+=("integration tests (sanitized, shard $k/$SHARDS)")
    integration build-asan "$log" "${SAN_ENV[@]}" SLUICE_SHARD="$k/$SHARDS" &
    pids+=($!)
done
wait "${pids[@]}"
echo "== integration passes ended (at ${SECONDS}s)"
for i in "${!logs[@]}"; do
    echo "== ${names[$i]}"
    cat "${logs[$i]}"
    count "${logs[$i]}"
    rm -f "${logs[$i]}"
done
export "${SAN_ENV[@]}"

# The chaos soak (tests/soak, tools/soak.sh) for 3 minutes on the sanitized
# build: one test per invariant.
# The soak and the fuzz targets run side by side: neither asserts on time.
if ! wait "$fuzz_build_pid"; then
    echo "== the fuzz targets' build failed:"; cat "$fuzz_build_log"
fi
rm -f "$fuzz_build_log"
echo "== chaos soak and fuzzing start (at ${SECONDS}s)"
soak_log=$(mktemp); fuzz_log=$(mktemp)
SLUICE_BUILD="$ROOT/build-asan" $PY tests/soak/soak.py --minutes "${SLUICE_SOAK_MINUTES:-3}" \
    >"$soak_log" 2>&1 &
soak_pid=$!
bash "$ROOT/tools/fuzz.sh" "${SLUICE_FUZZ_SECONDS:-12}" >"$fuzz_log" 2>&1 &
fuzz_pid=$!
wait "$soak_pid" "$fuzz_pid"
echo "== chaos soak: ${SLUICE_SOAK_MINUTES:-3} minutes (ASan, UBSan)"
cat "$soak_log"
count "$soak_log"
echo "== fuzzing: every libFuzzer target for ${SLUICE_FUZZ_SECONDS:-12} s (ASan, UBSan)"
cat "$fuzz_log"
count "$fuzz_log"
rm -f "$soak_log" "$fuzz_log"

echo "== done (at ${SECONDS}s)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
