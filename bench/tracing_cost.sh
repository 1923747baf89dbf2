#!/usr/bin/env bash
# Instructions per request that tracing adds on the request path, for the
# three shapes bench/tracing_cost.c measures. Counts only measure().
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD valgrind
build build
bin="$ROOT/build/bench/tracing_cost"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf "%-10s %14s\n" "case" "instr/request"
for c in continue new sampled; do
    valgrind --tool=callgrind --toggle-collect=measure --callgrind-out-file="$out/$c" \
        "$bin" "$c" >/dev/null 2>&1 || { echo "tracing_cost $c failed" >&2; exit 1; }
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$c")
    awk -v c="$c" -v ir="$ir" 'BEGIN { printf "%-10s %14.0f\n", c, ir / 10001 }'
done
