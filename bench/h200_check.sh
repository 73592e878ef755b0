#!/usr/bin/env bash
# Issue 17's GPU proof, prepared to run at once on a lent H200 (or H100). Run from the repository root:
#
#   call 1 (carry .whl):  set -o pipefail; DEADLINE_S=420 bash bench/h200_check.sh 2>&1 | tee $OUT/log
#   call 2 (carry .whl2, within the 30 s the machine stays warm):
#       set -o pipefail; DEADLINE_S=210 bash bench/h200_check.sh smollm2 throughput fsdp2 memory varlen overhead 2>&1 | tee $OUT/log
#
# .whl / .whl2 come from bench/h200_wheels.sh (run beforehand on the CPU machine): the wheels the device lacks
# plus half of SmolLM2's GGUF in .whl, the other half and the Alpaca rows in .whl2 (64 MiB per call).
# Phases, in priority order (arguments choose and order them; `env` always runs first, once per machine):
#   throughput  plain TRL vs the runner, full / QLoRA (varlen on a 4-bit base) / LoRA, TinyLlama 1.1B shape,
#               lengths U(128, 2048), batch 8, max_length 2048: tokens/s, MFU, peak vs the runner's estimate
#   smollm2     SmolLM2-135M-Instruct LoRA: runner vs plain TRL, loss curves and tokens/s (needs .whl2: call 2)
#   fsdp2       FSDP2 through the runner, one process (degenerate case), 1.1B shape
#   memory      memory estimate vs fresh peaks, out of sample (real model's shape, Qwen2-0.5B, other settings)
#   varlen      tests/tiny/test_fast_defaults.py -k varlen_kernel, and bench/varlen_check.py
#   overhead    bench/overhead.py (tiny model, every setting equal), runner vs plain TRL
# Every phase starts only if the overall deadline (DEADLINE_S from the start of this script) leaves its minimum,
# runs under `timeout` to at most its cap or the deadline, and saves each row/case as soon as it ends into
# $H200_RES, merged at once into $OUT/results.json and $OUT/summary.md (bench/h200_collect.py): a phase killed at
# the deadline keeps what the earlier phases and its own finished rows measured. State lives in /tmp/h200 and
# /tmp/site, which survive between calls while the machine is warm: rows, sides and cases already measured are
# not run again, so the second call also re-runs what the first skipped or lost.
# Files in $OUT: log (this output, via tee), rows.log (every child's whole output), results.json, summary.md,
# status.txt (one line per phase).
#
# DRY_RUN=1 (on a CPU, e.g. PY=/work/main/.venv/bin/python DRY_RUN=1 OUT=/tmp/h200-dry/out bash bench/h200_check.sh):
# no wheels, tiny sizes, CUDA-only steps replaced by their CPU counterparts or skipped with a message.
set -uo pipefail
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-420}
END=$((START + DEADLINE_S))
DRY_RUN=${DRY_RUN:-0}
PY=${PY:-python3}
W=${H200_WORK:-/tmp/h200}
OUT=${OUT:-$W/out}
WHL=${WHL:-.whl}
WHL2=${WHL2:-.whl2}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME=$W/hf RECIPE_RUNNER_CACHE=$W/cache WANDB_DISABLED=true
export H200_RES=$W/res H200_OUT=$OUT H200_ROWS_LOG=$OUT/rows.log
mkdir -p "$W/res" "$W/stash" "$W/done" "$OUT"
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(throughput smollm2 fsdp2 memory varlen overhead)

say() { echo "[h200 +$(( $(date +%s) - START ))s] $*"; }
status() { echo "$1 $2 $(( $(date +%s) - START ))s ${3:-}" >> "$OUT/status.txt"; say "$1: $2 ${3:-}"; }
say "start: phases ${PHASES[*]}, deadline ${DEADLINE_S}s, dry run $DRY_RUN, repo $(pwd), $(date -u)"

# 0. the carried wheels (installed once per machine), and the first half of the GGUF kept for call 2
if [ "$DRY_RUN" = 1 ]; then
  say "DRY_RUN: no wheels installed; $PY's own packages"
elif [ -f "$SITE/.installed" ]; then
  say "wheels already installed in $SITE (warm machine)"
elif ls "$WHL"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
    && touch "$SITE/.installed" || { status wheels FAILED "pip install from $WHL"; exit 3; }
  say "wheels installed: $(ls "$WHL"/*.whl | wc -l) from $WHL"
else
  status wheels COLD "no $WHL/*.whl carried and $SITE empty: a fresh machine; make call 1 (carry .whl) first"
  exit 3
fi
[ "$DRY_RUN" = 1 ] || export PYTHONPATH="$SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [ -f "$WHL/smollm2.gguf.part1" ] && [ ! -f "$W/stash/smollm2.gguf.part1" ]; then
  cp "$WHL/smollm2.gguf.part1" "$WHL/SHA256SUMS" "$W/stash/" && say "GGUF part 1 kept in $W/stash for call 2"
fi
HAVE_TIMEOUT=1; command -v timeout >/dev/null || HAVE_TIMEOUT=0

# run_phase NAME MIN_S CAP_S COMMAND...: start only with MIN_S left; at most CAP_S or to the deadline
run_phase() {
  local name=$1 min=$2 cap=$3; shift 3
  local now left limit rc
  now=$(date +%s); left=$((END - now))
  if [ "$left" -lt "$min" ]; then status "$name" SKIPPED "needs >= ${min}s, ${left}s left"; return 0; fi
  limit=$(( cap < left ? cap : left ))
  export H200_PHASE_END=$((now + limit - 3))
  say "== $name (up to ${limit}s): $*"
  if [ "$HAVE_TIMEOUT" = 1 ]; then timeout -k 10 "$limit" "$@"; else "$@"; fi
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status "$name" KILLED "at its limit of ${limit}s (rc $rc)"
  elif [ "$rc" -ne 0 ]; then status "$name" FAILED "rc $rc"
  else status "$name" done; touch "$W/done/$name"; fi
  "$PY" bench/h200_collect.py || true
  return 0
}

if [ -f "$W/done/env" ]; then say "env: already read on this machine"; else
  run_phase env 5 90 "$PY" bench/h200_phase.py env
  if [ ! -f "$W/done/env" ]; then say "the stack does not import: stopping (see $OUT/results.json, env)"; exit 4; fi
fi

for phase in "${PHASES[@]}"; do
  if [ -f "$W/done/$phase" ] && [ "${FORCE:-0}" != 1 ] && [ "$phase" != throughput ] && [ "$phase" != smollm2 ] \
     && [ "$phase" != memory ]; then
    say "$phase: done earlier on this machine (FORCE=1 runs it again)"; continue
  fi
  if [ "$DRY_RUN" = 1 ]; then
    case $phase in
      throughput) run_phase throughput 20 300 "$PY" bench/h200_throughput.py --shape tiny --steps 4 --warmup 1 \
                    --examples 40 --min-row-s 5 --assets "$W/assets" ;;
      smollm2)    run_phase smollm2 20 400 "$PY" bench/h200_smollm2.py --part1 "$WHL/smollm2.gguf.part1" \
                    --part2 "$WHL2/smollm2.gguf.part2" --sums "$WHL2/SHA256SUMS" --alpaca "$WHL2/alpaca_en_demo.json" \
                    --steps 2 --batch 2 --max-length 64 --work "$W/smollm2" --side-max-s 200 --min-side-s 5 ;;
      fsdp2)      say "fsdp2: FSDP needs CUDA (the runner refuses it on a CPU); the same plumbing with the tiny" \
                      "shape and accelerate_configs/single_gpu.yaml instead"
                  run_phase fsdp2 20 200 "$PY" bench/h200_phase.py fsdp2 --tiny --config single_gpu --steps 5 ;;
      memory)     run_phase memory 20 200 "$PY" bench/h200_memory.py --device cpu --steps 1 --min-case-s 5 --cases \
                    "smollm2-135m:runner_lora_nockpt@2x128,tinyllama-1.1b:runner_qlora_ckpt@2x128,qwen2-0.5b:full_bf16_nockpt@2x128" ;;
      varlen)     run_phase varlen 20 200 "$PY" bench/h200_phase.py varlen ;;
      overhead)   run_phase overhead 20 480 "$PY" bench/h200_phase.py overhead --rounds 1 ;;
      *)          say "unknown phase $phase" ;;
    esac
    continue
  fi
  case $phase in
    throughput) run_phase throughput 80 420 "$PY" bench/h200_throughput.py --steps 14 --warmup 4 --examples 1000 ;;
    smollm2)
      if [ ! -f "$WHL2/smollm2.gguf.part2" ]; then status smollm2 SKIPPED "GGUF part 2 comes with call 2 (carry .whl2)"
      elif [ ! -f "$W/stash/smollm2.gguf.part1" ]; then status smollm2 SKIPPED "GGUF part 1 not kept: machine not warm from call 1"
      else run_phase smollm2 60 170 "$PY" bench/h200_smollm2.py --part1 "$W/stash/smollm2.gguf.part1" \
             --part2 "$WHL2/smollm2.gguf.part2" --sums "$W/stash/SHA256SUMS" --alpaca "$WHL2/alpaca_en_demo.json" \
             --steps 40 --batch 8 --max-length 512
      fi ;;
    fsdp2)    run_phase fsdp2 90 150 "$PY" bench/h200_phase.py fsdp2 --steps 8 ;;
    memory)   run_phase memory 40 110 "$PY" bench/h200_memory.py --steps 3 ;;
    varlen)   run_phase varlen 25 60 "$PY" bench/h200_phase.py varlen ;;
    overhead) rounds=1; [ $((END - $(date +%s))) -ge 75 ] && rounds=2   # a cut-off overhead run saves nothing
              run_phase overhead 40 80 "$PY" bench/h200_phase.py overhead --rounds $rounds ;;
    *)        say "unknown phase $phase" ;;
  esac
done
"$PY" bench/h200_collect.py || true
say "finished; $OUT: $(ls "$OUT" | tr '\n' ' ')"
cat "$OUT/status.txt" 2>/dev/null
cat "$OUT/summary.md" 2>/dev/null
