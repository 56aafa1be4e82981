"""edvr-jax benchmarks: the DCN op, inference, the training step, the input pipeline, tiled restoration's
memory, PyTorch side by side, and the accelerator side-by-side with BasicSR.

    python -m benchmarks.run all [--quick]           # dcn + inference + train + pipeline + tiles (+ torch)
    python -m benchmarks.run dcn|inference|train|pipeline|tiles [--quick]
    python -m benchmarks.run restore [--quick] [--frames 16 400] [--code OTHER_CHECKOUT]   # long videos
    python -m benchmarks.run torch --basicsr-src benchmarks/.basicsr
    python -m benchmarks.run gpu --basicsr-src benchmarks/.basicsr [--budget 480] [--study] [--tiny]
    python -m benchmarks.run sweep [--budget 150] [--tiny]   # the Pallas forward kernel's launch parameters

Run from the repository root. Each benchmark prints a table and appends one JSON line per row (its
figures, the machine, versions and UTC date) to ``--out`` (default benchmarks/results/results.jsonl,
git-ignored); ``--tiny`` records nothing. Times are minima (CPU benchmarks) or medians (``gpu``,
``sweep``) over calls after a warm-up, compilation excluded; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import sys

if sys.argv[1:2] == ["gpu"]:  # jax and torch share the device: no preallocation of 75 % of it by XLA
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import Results, conv3x3, dcn_inputs, timeit  # noqa: E402
from edvr_jax.ops.dcn import modulated_deform_conv  # noqa: E402

#: What the accelerator runs (``gpu``, ``sweep``) must not import: a GPU environment needs only jax with
#: CUDA, flax, optax, orbax-checkpoint, einops, safetensors, pillow (and torch for the BasicSR half).
DATA_STACK = ("ml_collections", "grain", "tensorflow", "tensorflow_datasets", "av", "array_record", "clu")


def cpu_timeit(call, *args, repeats: int):
    """The CPU benchmarks' timing: the first call warms up, then exactly ``repeats`` calls (their minimum)."""
    return timeit(call, *args, warmup=0, min_calls=repeats, max_calls=repeats, target_s=0.0)


# ------------------------------------------------------------------------------------------ DCN op


def bench_dcn(results: Results, quick: bool) -> None:
    shapes = [(1, 180, 320, 64), (8, 64, 64, 64)] if quick else \
        [(1, 180, 320, 64), (1, 180, 320, 128), (8, 64, 64, 64), (8, 64, 64, 128)]
    dtypes = [jnp.float32] if quick else [jnp.float32, jnp.bfloat16]
    repeats = 3 if quick else 5
    print(f"{'shape (B,H,W,C), 8 groups':28} {'dtype':9} {'conv ms':>9} {'dcn ms':>9} {'ratio':>6} "
          f"{'conv f+b':>9} {'dcn f+b':>9} {'ratio':>6}")

    def f32sum(y):
        return y.astype(jnp.float32).sum()

    conv = jax.jit(conv3x3)
    dcn = jax.jit(modulated_deform_conv)
    conv_g = jax.jit(jax.grad(lambda x, k: f32sum(conv3x3(x, k)), argnums=(0, 1)))
    dcn_g = jax.jit(jax.grad(lambda *a: f32sum(modulated_deform_conv(*a)), argnums=(0, 1, 2, 3, 4)))
    for shape in shapes:
        for dt in dtypes:
            x, off, mask, kern, bias = dcn_inputs(shape, dt)
            tc = cpu_timeit(conv, x, kern, repeats=repeats).min_ms
            td = cpu_timeit(dcn, x, off, mask, kern, bias, repeats=repeats).min_ms
            tcg = cpu_timeit(conv_g, x, kern, repeats=max(2, repeats - 2)).min_ms
            tdg = cpu_timeit(dcn_g, x, off, mask, kern, bias, repeats=max(2, repeats - 2)).min_ms
            results.add("dcn", shape=list(shape), groups=8, dtype=jnp.dtype(dt).name, conv_ms=tc, dcn_ms=td,
                        fwd_ratio=td / tc, conv_fwd_bwd_ms=tcg, dcn_fwd_bwd_ms=tdg, fwd_bwd_ratio=tdg / tcg)
            print(f"{str(shape):28} {jnp.dtype(dt).name:9} {tc:9.1f} {td:9.1f} {td / tc:6.1f} "
                  f"{tcg:9.1f} {tdg:9.1f} {tdg / tcg:6.1f}")


# ------------------------------------------------------------------------------------------ inference


def conv_gflops(b: int, h: int, w: int, c: int, repeats: int) -> float:
    """Measured throughput of a 3x3 c -> c conv: the machine's reference figure."""
    x = jnp.ones((b, h, w, c))
    k = jnp.ones((3, 3, c, c)) * 0.01
    return 2 * b * h * w * 9 * c * c / (cpu_timeit(jax.jit(conv3x3), x, k, repeats=repeats).min_ms * 1e-3) / 1e9


def bench_inference(results: Results, quick: bool) -> dict:
    """EDVR-M (and EDVR-L) on one clip of 5 x 180x320: seconds per output frame, FLOPs, planned memory."""
    ref = conv_gflops(1, 180, 320, 64, repeats=3)
    print(f"measured 3x3 64->64 conv at 180x320: {ref:.0f} GFLOP/s")
    print(f"{'model':8} {'s/frame':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'of conv':>8} {'peak MiB':>9}")
    out = {}
    for preset in ["edvr_m"] if quick else ["edvr_m", "edvr_l"]:
        apply, params, x = harness.edvr_inference(1, preset=preset)
        compiled = apply.lower(params, x).compile()
        flops = harness.count_flops(apply, params, x)
        seconds = cpu_timeit(compiled, params, x, repeats=2 if quick else 3).min_ms * 1e-3
        row = results.add("inference", model=preset, input=list(x.shape), seconds_per_frame=seconds,
                          gflop=flops / 1e9, gflops_per_s=flops / seconds / 1e9,
                          fraction_of_conv=flops / seconds / 1e9 / ref, conv_gflops=ref,
                          peak_bytes=harness.memory_bytes(compiled))
        print(f"{preset:8} {seconds:8.2f} {flops / 1e9:8.0f} {flops / seconds / 1e9:8.1f} "
              f"{row['fraction_of_conv']:8.0%} {row['peak_bytes'] / 2**20:9.0f}")
        out[preset] = dict(row, params=params)
    return out


# ------------------------------------------------------------------------------------------ training step


def bench_train(results: Results, quick: bool) -> None:
    """train.py's step for EDVR-M at LR 64x64, float32: steps/s and XLA's planned memory per batch size."""
    print(f"{'EDVR-M batch (LR 64x64)':24} {'steps/s':>8} {'clips/s':>8} {'peak MiB':>9}")
    peaks, state = {}, None
    for batch in [1, 2] if quick else [1, 2, 4]:
        step, state, data = harness.edvr_m_train_step(batch, state=state)
        compiled = step.lower(state, data).compile()
        seconds = cpu_timeit(harness.stepping(compiled, state, data), repeats=2 if quick else 3).min_ms * 1e-3
        peaks[batch] = harness.memory_bytes(compiled)
        results.add("train_step", model="edvr_m", batch=batch, lr_patch=64, steps_per_s=1 / seconds,
                    clips_per_s=batch / seconds, peak_bytes=peaks[batch])
        print(f"{batch:24d} {1 / seconds:8.2f} {batch / seconds:8.2f} {peaks[batch] / 2**20:9.0f}")
    sizes = sorted(peaks)
    per_sample = float(np.polyfit(sizes, [peaks[b] for b in sizes], 1)[0])
    print(f"memory per additional sample: {per_sample / 2**20:.0f} MiB")
    results.add("train_step_memory", model="edvr_m", lr_patch=64, bytes_per_sample=per_sample, peak_bytes=peaks)


# ------------------------------------------------------------------------------------------ tiled restoration


def bench_tiles(results: Results, quick: bool) -> None:
    """Peak memory of tiled restoration of 1080p and 4K LR frames: XLA's planned peak for one batch of
    tiles, plus the host buffers (LR clip window, float32 output canvas and weights)."""
    tile, batch = 128, 1
    print(f"{'model':8} {'tile':>5} {'device MiB':>10} {'1080p host MiB':>15} {'4K host MiB':>12}")
    for preset in ["edvr_m"] if quick else ["edvr_m", "edvr_l"]:
        apply, params, x = harness.edvr_inference(batch, preset=preset, hw=(tile, tile), abstract=True)
        device = harness.memory_bytes(apply.lower(params, x).compile())
        host = {}
        for name, (w, h) in {"1080p": (1920, 1080), "4K": (3840, 2160)}.items():
            window = 5 * h * w * 3 * 4  # float32 LR window
            canvas = (4 * h) * (4 * w) * (3 + 1) * 4  # float32 RGB sum + weight
            host[name] = window + canvas
        print(f"{preset:8} {tile:5d} {device / 2**20:10.0f} {host['1080p'] / 2**20:15.0f} {host['4K'] / 2**20:12.0f}")
        results.add("tiles", model=preset, tile=tile, batch=batch, device_peak_bytes=device,
                    host_bytes_1080p=host["1080p"], host_bytes_4k=host["4K"])


# ------------------------------------------------------------------------------------------ PyTorch


def bench_torch(results: Results, basicsr_src: str | None, ours: dict | None) -> None:
    """BasicSR's own EDVR-M on the CPU (torchvision's DCN) against edvr-jax, same weights and input size."""
    from benchmarks.gpu import import_torch

    torch = import_torch()
    if torch is None:
        return
    if not basicsr_src:
        print("torch side-by-side skipped: pass --basicsr-src (BasicSR 1.4.2's source: benchmarks/README.md)")
        return
    from edvr_jax.convert import to_basicsr
    from tools.basicsr_source import load_basicsr_edvr

    ours = ours or bench_inference(results, quick=True)
    torch.set_num_threads(os.cpu_count())
    t_model = load_basicsr_edvr(basicsr_src).EDVR(num_feat=64, num_reconstruct_block=10).eval()
    weights = to_basicsr(ours["edvr_m"]["params"])
    t_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    x = torch.rand(1, 5, 3, 180, 320)
    with torch.no_grad():
        seconds = timeit(t_model, x, sync=lambda _: None, warmup=0, min_calls=2, max_calls=2).min_ms * 1e-3
    jax_seconds = ours["edvr_m"]["seconds_per_frame"]
    import torchvision
    results.add("torch_inference", model="edvr_m", torch=torch.__version__, torchvision=torchvision.__version__,
                torch_threads=torch.get_num_threads(), torch_seconds_per_frame=seconds,
                jax_seconds_per_frame=jax_seconds, speedup=seconds / jax_seconds)
    print(f"EDVR-M 5x180x320 -> 720x1280: PyTorch {seconds:.2f} s/frame, edvr-jax {jax_seconds:.2f} s/frame: "
          f"{seconds / jax_seconds:.2f}x")


# ------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["dcn", "inference", "train", "pipeline", "tiles", "restore", "torch", "all",
                                         "gpu", "sweep"])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--out", default=str(harness.DEFAULT_RESULTS),
                        help="JSON lines file the rows are appended to (default: %(default)s)")
    parser.add_argument("--basicsr-src", help="BasicSR 1.4.2's source (python -m tools.basicsr_source), for "
                        "the PyTorch side")
    parser.add_argument("--budget", type=float, help="gpu, sweep: seconds to spend (gpu 480, sweep 150); "
                        "items past it are skipped")
    parser.add_argument("--tiny", action="store_true", help="gpu, sweep: tiny shapes, to check the script on a "
                        "CPU (Pallas in interpret mode); nothing recorded")
    parser.add_argument("--study", action="store_true", help="gpu: EDVR-M's training step and inference with "
                        "each DCN implementation (gather, pallas), without BasicSR")
    parser.add_argument("--frames", type=int, nargs="+", help="restore: clip lengths (default 16 400)")
    parser.add_argument("--code", action="append", help="restore: another checkout to run side by side")
    parser.add_argument("--limit", type=float, help="restore: seconds after which a run is stopped")
    parser.add_argument("--rounds", type=int, default=1, help="gpu --study: times each item runs, interleaved")
    args = parser.parse_args(argv)
    results = Results(None if args.tiny else args.out)
    print(harness.machine())
    if args.what in ("gpu", "sweep"):
        from benchmarks import gpu, sweep

        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(DATA_STACK))
        if loaded:
            raise SystemExit(f"{args.what} imported {loaded}: it must run without the data stack")
        if args.what == "gpu":
            gpu.run(results, args.basicsr_src, args.budget or 480, args.tiny, args.study, args.rounds)
        else:
            sweep.run(results, args.budget or 150, args.tiny)
    else:
        ours = None
        if args.what in ("dcn", "all"):
            bench_dcn(results, args.quick)
        if args.what in ("inference", "all"):
            ours = bench_inference(results, args.quick)
        if args.what in ("train", "all"):
            bench_train(results, args.quick)
        if args.what in ("pipeline", "all"):
            from benchmarks.pipeline import bench_pipeline
            bench_pipeline(results, args.quick, args.basicsr_src)
        if args.what in ("tiles", "all"):
            bench_tiles(results, args.quick)
        if args.what == "restore":
            from benchmarks.restore import bench_restore
            bench_restore(results, args.quick, args.frames, codes=args.code, limit=args.limit)
        if args.what in ("torch", "all"):
            bench_torch(results, args.basicsr_src, ours)
    print(f"{len(results.rows)} rows appended to {results.path}" if results.path else "tiny shapes: nothing recorded")


if __name__ == "__main__":
    main()
