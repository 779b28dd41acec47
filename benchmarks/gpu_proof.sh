#!/usr/bin/env bash
# One GPU proof run: install from local wheels what this machine lacks, then `python benchmarks/gpu_proof run`.
#
# Usage: benchmarks/gpu_proof.sh [--smoke] [--wheels DIR] [--data DIR] [--train-budget-s S] [--budget-s S]
#
#   --smoke             CPU, tiny synthetic data and sizes, every section written (a few minutes on 2 cores)
#   --wheels DIR        wheels to install from, never from a registry (default .whl)
#   --data DIR          the real slices: a PNG folder or a `python benchmarks/gpu_proof pack` of one
#                       (default .data/figshare-png256-j2k)
#   --train-budget-s S  wall seconds for the paper run's training (default 240)
#   --budget-s S        wall seconds for everything, install included (default 540)
#
# Writes $OUT/gpu_proof.json and $OUT/paper_run_jsons.tar.gz (OUT defaults to benchmarks/results,
# benchmarks/results/smoke with --smoke). Python: $PYTHON, else .venv/bin/python, else python3.
# docs/performance.md says what each figure means.
set -euo pipefail
started=$(date +%s)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

smoke=0 wheels=.whl data="" train_budget=240 budget=540
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; shift ;;
    --wheels|--data|--train-budget-s|--budget-s)
      [ $# -ge 2 ] || { echo "gpu_proof.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --wheels) wheels=$2 ;; --data) data=$2 ;; --train-budget-s) train_budget=$2 ;; --budget-s) budget=$2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_proof.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if [ -z "${OUT:-}" ]; then
  if [ "$smoke" = 1 ]; then OUT=benchmarks/results/smoke; else OUT=benchmarks/results; fi
fi
mkdir -p "$OUT"

report=$(mktemp)
site=$(mktemp -d)
trap 'rm -rf "$report" "$site"' EXIT
mapfile -t need < <("$python" benchmarks/gpu_proof wheels "$wheels" --report "$report")
if [ "${#need[@]}" -gt 0 ]; then
  echo "gpu_proof.sh: installing ${need[*]##*/}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${need[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root/src:$root/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

args=(run --out "$OUT" --started "$started" --deadline $((started + budget)) --train-budget-s "$train_budget"
      --install-report "$report")
[ "$smoke" = 1 ] && args+=(--smoke)
[ -n "$data" ] && args+=(--data "$data")
"$python" benchmarks/gpu_proof "${args[@]}"
