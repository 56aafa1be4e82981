#!/usr/bin/env bash
# One GPU session's measurements, in two calls of the device tool made back to back (the machine stays
# warm 30 s between them), the most valuable first. A session has 15 device minutes, the machine's start
# (one to two minutes) included: "record" takes about 7 minutes, "explore" about 5. Every row is appended
# to $OUT/results.jsonl as it is measured (EDVR_JAX_RESULTS) and every log is written to $OUT as it goes,
# so a call cut short by the session's device time still brings back what it measured.
#
#   record   benchmarks/run.py gpu: the issue's whole table against BasicSR (DCN op, EDVR-M inference and
#            training step, f32 and bf16), with the profiles of the bf16 training step and inference
#   explore  benchmarks/gather_ab.py pallas (the training step with the gather, with the Pallas kernels and
#            their relaxed atomics, and with the acquire-release atomics measured before), then
#            gather_ab.py sample-order (the gather's input-gradient scatter, [.., G, K] against [.., K, G]),
#            one round each, then benchmarks/pallas_sweep.py (the bf16 inference's DCN kernel)
#
# From the device tool, in the repository root (benchmarks/.basicsr: python benchmarks/get_basicsr.py):
#   run(command="bash benchmarks/gpu_session.sh record", carry=["benchmarks/.basicsr"], timeout_s=450)
#   run(command="bash benchmarks/gpu_session.sh explore", timeout_s=360)
# then here, after each: cat <files_at>/results.jsonl >> benchmarks/results.jsonl (and keep the logs).
# TINY=1 runs both parts with tiny shapes on a CPU machine (interpret mode), recording nothing: a check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1 EDVR_JAX_RESULTS="$out/results.jsonl"
tiny=${TINY:+--tiny}
budget=380 ab_pallas=150 ab_order=110 sweep=60
[ -n "$tiny" ] && budget=900 ab_pallas=900 ab_order=900  # interpret mode on a CPU is slow: only a check
case "${1:-}" in
  record)
    python benchmarks/run.py gpu --basicsr-src benchmarks/.basicsr --budget "$budget" $tiny 2>&1 \
       | tee "$out/gpu.log" ;;
  explore)
    timeout "$ab_pallas" python benchmarks/gather_ab.py pallas --rounds 1 $tiny 2>&1 | tee "$out/ab_pallas.log"
    timeout "$ab_order" python benchmarks/gather_ab.py sample-order --rounds 1 $tiny 2>&1 | tee "$out/ab_order.log"
    python benchmarks/pallas_sweep.py --budget "$sweep" $tiny 2>&1 | tee "$out/sweep.log" ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh record|explore (see the comments at its top)" >&2
    exit 2 ;;
esac
echo "logs and results in $out"
