"""edvr-jax's benchmarks, run from the repository root as ``python -m benchmarks.run <what>``
(benchmarks/README.md): ``harness`` (timer, machine record, results writer, the EDVR-M workloads),
``run`` (the command line; the DCN op, inference, training step, tiles and PyTorch benchmarks),
``pipeline``, ``restore`` (the restore CLI on long videos: peak memory, speed), ``gpu`` (the
side-by-side with BasicSR, the DCN study), ``sweep`` (Pallas launch parameters), ``linear_proxy``
(a training-free estimate of what extra frames can give), ``codec_lq`` (what the codec options do
to the demo's input)."""
