#!/usr/bin/env bash
# One GPU session's measurements, in two calls of the device tool made back to back (the machine stays
# warm 30 s between them), the most valuable first. A session has 15 device minutes, the machine's start
# (one to two minutes) included: "record" takes about 7 minutes, "explore" about 5. Every row is appended
# to $OUT/results.jsonl as it is measured (EDVR_JAX_RESULTS) and every log is written to $OUT as it goes,
# so a call cut short by the session's device time still brings back what it measured.
#
#   record   benchmarks/run.py gpu: the issue's whole table against BasicSR (DCN op, EDVR-M inference and
#            training step, f32 and bf16), with the profiles of the bf16 training step and inference
#   explore  benchmarks/gather_ab.py sample-order (the training step's input-gradient scatter, [.., G, K]
#            against [.., K, G]), then benchmarks/pallas_sweep.py (the bf16 inference's DCN kernel)
#
# From the device tool, in the repository root (benchmarks/.basicsr: python benchmarks/get_basicsr.py):
#   run(command="bash benchmarks/gpu_session.sh record", carry=["benchmarks/.basicsr"], timeout_s=480)
#   run(command="bash benchmarks/gpu_session.sh explore", timeout_s=330)
# then here, after each: cat <files_at>/results.jsonl >> benchmarks/results.jsonl (and keep the logs).
# TINY=1 runs both parts with tiny shapes on a CPU machine (interpret mode), recording nothing: a check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1 EDVR_JAX_RESULTS="$out/results.jsonl"
tiny=${TINY:+--tiny}
budget=400
[ -n "$tiny" ] && budget=900  # interpret mode on a CPU is slow; tiny shapes only check the script
case "${1:-}" in
  record)
    python benchmarks/run.py gpu --basicsr-src benchmarks/.basicsr --budget "$budget" $tiny 2>&1 \
       | tee "$out/gpu.log" ;;
  explore)
    timeout "${AB_SECONDS:-200}" python benchmarks/gather_ab.py sample-order $tiny 2>&1 | tee "$out/ab.log"
    python benchmarks/pallas_sweep.py --budget "${SWEEP_SECONDS:-90}" $tiny 2>&1 | tee "$out/sweep.log" ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh record|explore (see the comments at its top)" >&2
    exit 2 ;;
esac
echo "logs and results in $out"
