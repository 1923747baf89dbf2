#!/usr/bin/env bash
# Instructions per json-mode shadow comparison for a few answer shapes:
# the one-pass path (identical bytes, compare/jsoncmp.c, jansson when
# unsure) against jansson alone. Counts only the measured loop.
source "$(dirname "$0")/../tools/common.sh"
cd "$ROOT"
ensure_packages $DEPS_BUILD valgrind
build build
bin="$ROOT/build/bench/cmp_cost"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf "%-48s %6s %12s %12s %7s\n" "case" "bytes" "one-pass" "jansson" "ratio"
"$bin" --list | while IFS=$'\t' read -r i bytes name; do
    declare -A ir=()
    for path in fast jansson; do
        valgrind --tool=callgrind --toggle-collect=measure --callgrind-out-file="$out/$i.$path" \
            "$bin" "$i" "$path" >/dev/null 2>&1 || { echo "cmp_cost $i $path failed" >&2; exit 1; }
        ir[$path]=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$i.$path")
    done
    awk -v n="$name" -v b="$bytes" -v f="${ir[fast]}" -v j="${ir[jansson]}" 'BEGIN {
        printf "%-48s %6d %12.0f %12.0f %6.1fx\n", n, b, f / 1000, j / 1000, j / f }'
done
