#!/usr/bin/env bash
# Benchmark: `principia convert` and `principia run --generator extractive` on the whole US Code
# Title 21 (usc21.xml, 12 MB, 757 sections), with Python's C-accelerated ElementTree parsing the
# same file in the same run as the reference. Prints a markdown table for BENCHMARKS.md.
# Usage: tests/bench/usc21.sh [RUNS]   (needs ../shared/corpora; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
corpus=${PRINCIPIA_CORPORA:-../shared/corpora}/us-code-title21/usc21.xml
[ -f "$corpus" ] || { echo "missing $corpus" >&2; exit 1; }
cargo build --release -p coordinator >/dev/null 2>&1
bin=target/release/principia
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Best of N wall time (seconds) and the peak RSS (MiB) of that command.
measure() {
  local best=999999 rss=0
  for _ in $(seq "$runs"); do
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    read -r secs kib <"$work/time"
    best=$(python3 -c "print(min($best, $secs))")
    rss=$(( kib / 1024 ))
  done
  echo "$best $rss"
}

read -r et_secs et_rss < <(measure python3 -c "import xml.etree.ElementTree as ET, sys; ET.parse(sys.argv[1])" "$corpus")
read -r conv_secs conv_rss < <(measure "$bin" convert "$corpus" -o "$work/tree.json")
read -r run_secs run_rss < <(measure bash -c "rm -rf '$work/out' && RUST_LOG=warn '$bin' run '$corpus' --generator extractive --instructions 'I want a chatbot that specializes in US food and drug law' --out '$work/out'")
items=$(python3 -c "import json;r=json.load(open('$work/out/report.json'));print(r['items']['accepted'], r['coverage']['covered'], r['coverage']['total'], r['shards']['total'])")

echo "| step | wall time (best of $runs) | peak RSS | ratio to ElementTree |"
echo "| --- | ---: | ---: | ---: |"
echo "| Python ElementTree parse (reference) | ${et_secs} s | ${et_rss} MiB | 1.00 |"
echo "| principia convert (parse + tree + JSON) | ${conv_secs} s | ${conv_rss} MiB | $(python3 -c "print(f'{$conv_secs/$et_secs:.2f}')") |"
echo "| principia run --generator extractive | ${run_secs} s | ${run_rss} MiB | $(python3 -c "print(f'{$run_secs/$et_secs:.2f}')") |"
echo
echo "run: items, covered sections, generation units, shards = $items"
