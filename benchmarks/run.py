"""edvr-jax benchmarks: the DCN op, inference, a training step, and PyTorch side by side.

    python benchmarks/run.py all                    # dcn + inference + train + pipeline (+ torch if installed)
    python benchmarks/run.py dcn|inference|train|pipeline|tiles|torch [--quick]
    python benchmarks/run.py torch --basicsr-src /tmp/bsr/basicsr-1.4.2
    python benchmarks/run.py gpu --basicsr-src benchmarks/.basicsr [--budget 480] [--tiny]

Each benchmark prints a table and appends one JSON record per row (machine,
versions, date, figures) to benchmarks/results.jsonl, or to the file named by
``EDVR_JAX_RESULTS`` (on a GPU machine: a file under ``$OUT``, so that rows
written before a run is cut off come back). Times are the minimum over
repeats after a warm-up (compilation excluded); ratios are taken within one run.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

if sys.argv[1:2] == ["gpu"]:  # jax and torch share the device: no preallocation of 75 % of it by XLA
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edvr_jax import edvr_from_preset, modulated_deform_conv  # noqa: E402

RESULTS = Path(os.environ.get("EDVR_JAX_RESULTS") or ROOT / "benchmarks" / "results.jsonl")


def machine() -> dict:
    info = {}
    try:  # the first processor's fields: "AMD EPYC" alone hides a 2x spread (Zen 3 AVX2 vs Zen 4 AVX-512)
        for line in open("/proc/cpuinfo"):
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    import flax
    return dict(cpu=info.get("model name", "unknown"), cpu_family=info.get("cpu family"), cpu_model=info.get("model"),
                isa=isa, cores=os.cpu_count(), backend=jax.default_backend(), device=str(jax.devices()[0]),
                device_kind=jax.devices()[0].device_kind,
                python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def record(bench: str, row: dict) -> None:
    with RESULTS.open("a") as f:
        f.write(json.dumps({"bench": bench, **row, "machine": machine()}) + "\n")


def timeit(fn, *args, repeats: int = 5) -> float:
    """Minimum wall time (s) of ``fn(*args)`` over ``repeats`` runs after one warm-up."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def conv3x3(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_gflops(b: int, h: int, w: int, c: int, repeats: int) -> float:
    """Measured throughput of a 3x3 c -> c conv, the machine's reference figure."""
    x = jnp.ones((b, h, w, c))
    k = jnp.ones((3, 3, c, c)) * 0.01
    t = timeit(jax.jit(conv3x3), x, k, repeats=repeats)
    return 2 * b * h * w * 9 * c * c / t / 1e9


# ------------------------------------------------------------------------------------------ DCN op


def bench_dcn(quick: bool) -> None:
    shapes = [(1, 180, 320, 64), (8, 64, 64, 64)] if quick else \
        [(1, 180, 320, 64), (1, 180, 320, 128), (8, 64, 64, 64), (8, 64, 64, 128)]
    dtypes = [jnp.float32] if quick else [jnp.float32, jnp.bfloat16]
    repeats = 3 if quick else 5
    print(f"{'shape (B,H,W,C), 8 groups':28} {'dtype':9} {'conv ms':>9} {'dcn ms':>9} {'ratio':>6} "
          f"{'conv f+b':>9} {'dcn f+b':>9} {'ratio':>6}")
    for b, h, w, c in shapes:
        for dt in dtypes:
            keys = jax.random.split(jax.random.key(0), 4)
            x = jax.random.normal(keys[0], (b, h, w, c), dt)
            off = 2.0 * jax.random.normal(keys[1], (b, h, w, 8 * 18))  # float32 offsets, a few pixels
            mask = jax.nn.sigmoid(jax.random.normal(keys[2], (b, h, w, 8 * 9))).astype(dt)
            kern = (0.05 * jax.random.normal(keys[3], (3, 3, c, c))).astype(dt)
            bias = jnp.zeros((c,), dt)
            conv = jax.jit(conv3x3)
            dcn = jax.jit(modulated_deform_conv)
            conv_g = jax.jit(jax.grad(lambda x, k: conv3x3(x, k).astype(jnp.float32).sum(), argnums=(0, 1)))
            dcn_g = jax.jit(jax.grad(lambda *a: modulated_deform_conv(*a).astype(jnp.float32).sum(),
                                     argnums=(0, 1, 2, 3, 4)))
            tc, td = timeit(conv, x, kern, repeats=repeats), timeit(dcn, x, off, mask, kern, bias, repeats=repeats)
            tcg = timeit(conv_g, x, kern, repeats=max(2, repeats - 2))
            tdg = timeit(dcn_g, x, off, mask, kern, bias, repeats=max(2, repeats - 2))
            row = dict(shape=[b, h, w, c], groups=8, dtype=jnp.dtype(dt).name, conv_ms=tc * 1e3, dcn_ms=td * 1e3,
                       fwd_ratio=td / tc, conv_fwd_bwd_ms=tcg * 1e3, dcn_fwd_bwd_ms=tdg * 1e3, fwd_bwd_ratio=tdg / tcg)
            print(f"{str((b, h, w, c)):28} {row['dtype']:9} {tc * 1e3:9.1f} {td * 1e3:9.1f} {td / tc:6.1f} "
                  f"{tcg * 1e3:9.1f} {tdg * 1e3:9.1f} {tdg / tcg:6.1f}")
            record("dcn", row)


# ------------------------------------------------------------------------------------------ inference


def memory_bytes(compiled) -> int:
    """Peak device memory XLA plans for one call: arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def model_flops(model, variables, x) -> float:
    """FLOPs of one ``model.apply`` from XLA's cost analysis, with the DCNs traced as one chunk.

    XLA's cost analysis counts a while loop's body once, so the row-chunked DCN
    loop would be undercounted by its trip count; the arithmetic is the same
    either way.
    """
    import functools

    from edvr_jax.models import dcn

    chunked = dcn.modulated_deform_conv
    dcn.modulated_deform_conv = functools.partial(chunked, chunk_rows=1 << 30)
    try:
        return float(jax.jit(model.apply).lower(variables, x).compile().cost_analysis()["flops"])
    finally:
        dcn.modulated_deform_conv = chunked


def bench_inference(quick: bool) -> dict:
    presets = ["edvr_m"] if quick else ["edvr_m", "edvr_l"]
    ref = conv_gflops(1, 180, 320, 64, repeats=3)
    print(f"measured 3x3 64->64 conv at 180x320: {ref:.0f} GFLOP/s")
    print(f"{'model':8} {'s/frame':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'of conv':>8} {'peak MiB':>9}")
    out = {}
    for name in presets:
        model = edvr_from_preset(name, offset_warning=False)
        x = jax.random.uniform(jax.random.key(1), (1, 5, 180, 320, 3))
        variables = jax.jit(model.init)(jax.random.key(0), x)
        compiled = jax.jit(model.apply).lower(variables, x).compile()
        flops = model_flops(model, variables, x)
        t = timeit(compiled, variables, x, repeats=2 if quick else 3)
        row = dict(model=name, input=[1, 5, 180, 320, 3], seconds_per_frame=t, gflop=flops / 1e9,
                   gflops_per_s=flops / t / 1e9, fraction_of_conv=flops / t / 1e9 / ref, conv_gflops=ref,
                   peak_bytes=memory_bytes(compiled))
        print(f"{name:8} {t:8.2f} {flops / 1e9:8.0f} {flops / t / 1e9:8.1f} {row['fraction_of_conv']:8.0%} "
              f"{row['peak_bytes'] / 2**20:9.0f}")
        record("inference", row)
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------ training step


def bench_train(quick: bool) -> None:
    import optax

    model = edvr_from_preset("edvr_m", offset_warning=False)
    tx = optax.adam(4e-4, b1=0.9, b2=0.99)

    def loss_fn(params, lq, gt):
        out = model.apply({"params": params}, lq)
        return jnp.sum(jnp.sqrt((out - gt) ** 2 + 1e-12))  # BasicSR's Charbonnier, reduction 'sum'

    def step(params, opt_state, lq, gt):
        loss, grads = jax.value_and_grad(loss_fn)(params, lq, gt)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 5, 64, 64, 3)))["params"]
    print(f"{'EDVR-M batch (LR 64x64)':24} {'steps/s':>8} {'clips/s':>8} {'peak MiB':>9}")
    peaks = {}
    for batch in ([1, 2] if quick else [1, 2, 4]):
        lq = jax.random.uniform(jax.random.key(1), (batch, 5, 64, 64, 3))
        gt = jax.random.uniform(jax.random.key(2), (batch, 256, 256, 3))
        opt_state = tx.init(params)
        compiled = jax.jit(step).lower(params, opt_state, lq, gt).compile()
        t = timeit(compiled, params, opt_state, lq, gt, repeats=2 if quick else 3)
        peaks[batch] = memory_bytes(compiled)
        row = dict(model="edvr_m", batch=batch, lr_patch=64, steps_per_s=1 / t, clips_per_s=batch / t,
                   peak_bytes=peaks[batch])
        print(f"{batch:24d} {1 / t:8.2f} {batch / t:8.2f} {peaks[batch] / 2**20:9.0f}")
        record("train_step", row)
    b = sorted(peaks)
    per_sample = np.polyfit(b, [peaks[i] for i in b], 1)[0]
    print(f"memory per additional sample: {per_sample / 2**20:.0f} MiB")
    record("train_step_memory", dict(model="edvr_m", lr_patch=64, bytes_per_sample=float(per_sample),
                                     peak_bytes=peaks))


# ------------------------------------------------------------------------------------------ input pipeline


def _fake_reds(root: Path, clips: int, frames: int) -> None:
    """A REDS-shaped folder (720x1280 GT, 180x320 bicubic LQ) from scikit-image's photos."""
    from PIL import Image

    from edvr_jax.data.bicubic import downsample_uint8
    from edvr_jax.data.demo import TRAIN_PHOTOS, photo

    for c in ["000", "011", "015", "020"] + [f"{i:03d}" for i in range(1, clips + 1)]:
        base = Image.fromarray(photo(TRAIN_PHOTOS[int(c) % len(TRAIN_PHOTOS)]).astype(np.uint8)).resize((1320, 736))
        for f in range(frames):
            gt = np.asarray(base)[f:f + 720, 2 * f:2 * f + 1280]
            for part, img in (("train_sharp", gt), ("train_sharp_bicubic/X4", downsample_uint8(gt))):
                (root / part / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / part / c / f"{f:08d}.png")
    for part in ("val_sharp/000", "val_sharp_bicubic/X4/000"):
        (root / part).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            src = root / part.replace("val", "train").replace("/000", "/001") / f"{f:08d}.png"
            (root / part / src.name).write_bytes(src.read_bytes())


def bench_pipeline(quick: bool) -> None:
    import tempfile

    import tensorflow_datasets as tfds

    from edvr_jax.data import ClipReader, EdvrReds, WindowSpec, load_builder, train_loader

    tmp = Path(tempfile.mkdtemp(prefix="edvr_pipeline_"))
    start = time.perf_counter()
    demo = load_builder("demo", data_dir=str(tmp / "tfds"))
    print(f"demo dataset built in {time.perf_counter() - start:.1f} s")
    _fake_reds(tmp / "reds", clips=2, frames=8 if quick else 12)
    reds = EdvrReds(config="sr_x4", data_dir=str(tmp / "tfds"))
    reds.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / "reds")))
    cases = [("demo", ClipReader(demo, "train"), WindowSpec(num_frame=5, gt_size=64)),
             ("reds-size 720p", ClipReader(reds, "train"), WindowSpec(num_frame=5, gt_size=256))]
    print(f"{'dataset':16} {'workers':>7} {'batch':>5} {'clips/s':>8}")
    for name, reader, spec in cases:
        for workers in (0, 2):
            batch = 8
            it = iter(train_loader(reader, spec, batch, seed=0, worker_count=workers))
            next(it)  # start-up (worker processes) excluded
            n = 3 if quick else 10
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            rate = n * batch / (time.perf_counter() - t0)
            del it
            print(f"{name:16} {workers:7d} {batch:5d} {rate:8.1f}")
            record("pipeline", dict(dataset=name, workers=workers, batch=batch, num_frame=spec.num_frame,
                                    gt_size=spec.gt_size, clips_per_s=rate))


# ------------------------------------------------------------------------------------------ tiled restoration


def bench_tiles(quick: bool) -> None:
    """Peak memory of tiled restoration of 1080p and 4K LR frames: XLA's planned peak for one
    batch of tiles, plus the host buffers (LR clip window, float32 output canvas and weights)."""
    tile, batch = 128, 1
    print(f"{'model':8} {'tile':>5} {'device MiB':>10} {'1080p host MiB':>15} {'4K host MiB':>12}")
    for preset in (["edvr_m"] if quick else ["edvr_m", "edvr_l"]):
        model = edvr_from_preset(preset, offset_warning=False)
        x = jnp.zeros((batch, 5, tile, tile, 3))
        params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
        compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
        device = memory_bytes(compiled)
        host = {}
        for name, (w, h) in {"1080p": (1920, 1080), "4K": (3840, 2160)}.items():
            window = 5 * h * w * 3 * 4  # float32 LR window
            canvas = (4 * h) * (4 * w) * (3 + 1) * 4  # float32 RGB sum + weight
            host[name] = window + canvas
        print(f"{preset:8} {tile:5d} {device / 2**20:10.0f} {host['1080p'] / 2**20:15.0f} {host['4K'] / 2**20:12.0f}")
        record("tiles", dict(model=preset, tile=tile, batch=batch, device_peak_bytes=device,
                             host_bytes_1080p=host["1080p"], host_bytes_4k=host["4K"]))


# ------------------------------------------------------------------------------------------ PyTorch


def bench_torch(basicsr_src: str | None, ours: dict | None) -> None:
    try:
        import torch
        import torchvision
        torchvision.ops.deform_conv2d  # noqa: B018
        torch.ops.torchvision.deform_conv2d  # noqa: B018  raises when the compiled ops do not load
    except Exception as e:  # noqa: BLE001
        print(f"torch side-by-side skipped: PyTorch with torchvision's compiled ops is not importable ({e})")
        return
    if not basicsr_src:
        print("torch side-by-side skipped: pass --basicsr-src (BasicSR 1.4.2 source, see tools/make_basicsr_goldens.py)")
        return
    sys.path.insert(0, str(ROOT / "tools"))
    from make_basicsr_goldens import load_basicsr_edvr
    edvr_arch = load_basicsr_edvr(Path(basicsr_src))
    torch.set_num_threads(os.cpu_count())
    ours = ours or bench_inference(quick=True)
    t_model = edvr_arch.EDVR(num_feat=64, num_reconstruct_block=10).eval()
    x = torch.rand(1, 5, 3, 180, 320)
    with torch.no_grad():
        t_model(x)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            t_model(x)
            best = min(best, time.perf_counter() - start)
    row = dict(model="edvr_m", torch=torch.__version__, torchvision=torchvision.__version__,
               torch_threads=torch.get_num_threads(), torch_seconds_per_frame=best,
               jax_seconds_per_frame=ours["edvr_m"]["seconds_per_frame"],
               speedup=best / ours["edvr_m"]["seconds_per_frame"])
    print(f"EDVR-M 5x180x320 -> 720x1280: PyTorch {best:.2f} s/frame, edvr-jax "
          f"{row['jax_seconds_per_frame']:.2f} s/frame: {row['speedup']:.2f}x")
    record("torch_inference", row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["dcn", "inference", "train", "pipeline", "tiles", "torch", "all", "gpu"])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--basicsr-src", help="BasicSR 1.4.2 source tree, for the PyTorch comparison")
    parser.add_argument("--budget", type=float, default=480, help="gpu: seconds to spend (items past it are skipped)")
    parser.add_argument("--tiny", action="store_true", help="gpu: tiny shapes, to check the script on a CPU")
    parser.add_argument("--study", action="store_true",
                        help="gpu: the whole model with each DCN implementation (gather, pallas, and pallas for one "
                             "pass only), instead of the side-by-side with BasicSR")
    args = parser.parse_args()
    print(json.dumps(machine()))
    if args.which == "gpu":
        import gpu
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(gpu.BLOCKED))
        if loaded:
            raise SystemExit(f"gpu mode imported {loaded}, which the accelerator image lacks")
        gpu.run(args.basicsr_src, args.budget, args.tiny, (lambda *a: None) if args.tiny else record, args.study)
        print("tiny shapes: nothing recorded" if args.tiny else f"appended to {RESULTS}")
        return
    ours = None
    if args.which in ("dcn", "all"):
        bench_dcn(args.quick)
    if args.which in ("inference", "all"):
        ours = bench_inference(args.quick)
    if args.which in ("train", "all"):
        bench_train(args.quick)
    if args.which in ("pipeline", "all"):
        bench_pipeline(args.quick)
    if args.which in ("tiles", "all"):
        bench_tiles(args.quick)
    if args.which in ("torch", "all"):
        bench_torch(args.basicsr_src, ours)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
