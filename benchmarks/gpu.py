"""The accelerator side-by-side: edvr-jax against BasicSR 1.4.2 in one process, and the DCN study.

    python -m benchmarks.run gpu --basicsr-src benchmarks/.basicsr [--budget 480]
    python -m benchmarks.run gpu --study [--rounds 2] [--budget 480]
    python -m benchmarks.run gpu --tiny --budget 900 [--basicsr-src benchmarks/.basicsr]   # a check on a CPU

Default: the bf16 matmul rate (the ceiling each result is compared with); correctness on this device
(the Pallas kernels against the gather, value and all five gradients; EDVR-M with the same weights
against BasicSR); the DCN op (lax.conv, the gather, the Pallas kernels, torchvision's ``deform_conv2d``;
forward and forward+backward; f32 and bf16) at (16,64,64,64), (1,180,320,64), (1,180,320,128); EDVR-M
inference (1 and 8 clips of 5x180x320) and training steps (batch 8 and 32 at LR 64x64) in f32 and bf16
with the default ``DCNOptions()``, against BasicSR in f32 and AMP (autocast fp16 + GradScaler,
``cudnn.benchmark`` on, as BasicSR's scripts set it), then bf16 rows with ``impl="pallas"`` and
``impl="gather"``. The first training step and the first inference are traced with ``jax.profiler``:
device-kernel time per call by kind and the 12 largest kernels. ``--study``: EDVR-M's training step
(batch 32) and inference (8 clips, 1 clip), f32 and bf16, with ``impl="gather"`` and ``impl="pallas"``,
interleaved, ``--rounds`` times, without BasicSR: the figures behind ``impl="auto"``'s choice.

One line per result as it goes (``[section] name ms extra``), then a table. Items run in order of
importance and are skipped once ``--budget`` seconds are spent (compilation included). ``--tiny``: small
shapes and a small EDVR, to check the script on a CPU (the Pallas kernels in interpret mode, torch on the
CPU). The PyTorch half needs torch, torchvision with its compiled ops, and BasicSR's source; it is
skipped without them.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.harness import Results, conv3x3, dcn_inputs, timeit
from edvr_jax.convert import to_basicsr
from edvr_jax.models import PRESETS
from edvr_jax.ops.dcn import DCNOptions, modulated_deform_conv
from edvr_jax.ops.dcn import pallas as dcn_pallas


def import_torch():
    """torch, or None (with the reason printed) when torch or torchvision's compiled ops are missing."""
    try:
        import torch
        import torchvision  # noqa: F401
        torch.ops.torchvision.deform_conv2d  # noqa: B018  raises when the compiled ops do not load
        return torch
    except Exception as e:  # noqa: BLE001
        print(f"PyTorch half skipped: torch/torchvision with compiled ops not importable ({e})", flush=True)
        return None


# ------------------------------------------------------------------------------------------ profile


def kernel_category(name: str) -> str:
    """A GPU kernel's kind, from the names XLA and the libraries give them."""
    n = name.lower()
    if "scatter" in n:
        return "scatter (DCN input gradient)"
    if "gather" in n:
        return "gather (DCN)"
    if any(t in n for t in ("xmma", "cudnn", "conv", "implicit_gemm", "fprop", "dgrad", "wgrad")):
        return "cuDNN convolution"
    if "gemm" in n or "cublas" in n or "cutlass" in n:
        return "matmul"
    if "reduce" in n:
        return "reduction"
    if "triton" in n or "pallas" in n or "kernel" in n or "dcn_" in n:
        return "Pallas/Triton"
    return "other XLA fusions"


def kernel_profile(call, calls: int = 3, trace_dir: str | None = None) -> dict | None:
    """GPU kernel time per call of ``call`` from a ``jax.profiler`` trace: ``{"total": ms, "kernels":
    [(ms, name)], "categories": {category: ms}}``, or None when the trace has no device kernels (CPU)."""
    call()
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="edvr_profile_")
    with jax.profiler.trace(trace_dir):
        for _ in range(calls):
            jax.block_until_ready(call())
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not files:
        return None
    with gzip.open(files[0]) as f:
        events = json.load(f)["traceEvents"]
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and "/device:" in e.get("args", {}).get("name", "")}
    per_name: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in devices:
            per_name[e["name"]] = per_name.get(e["name"], 0.0) + e.get("dur", 0) / 1e3 / calls
    if not per_name:
        return None
    categories: dict[str, float] = {}
    for name, ms in per_name.items():
        categories[kernel_category(name)] = categories.get(kernel_category(name), 0.0) + ms
    return {"total": sum(per_name.values()), "kernels": sorted(((ms, n) for n, ms in per_name.items()), reverse=True),
            "categories": categories}


# ------------------------------------------------------------------------------------------ plumbing


class Report:
    """Prints each result as it comes and adds it to the run's ``Results`` (bench "gpu")."""

    def __init__(self, results: Results, budget_s: float):
        self.results, self.start, self.budget_s = results, time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def add(self, section: str, name: str, ms: float | None, **extra) -> None:
        self.results.add("gpu", section=section, name=name, ms=ms, **extra)
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
                         if not isinstance(v, list))
        print(f"[{section:7}] {name:52} {'-' if ms is None else f'{ms:9.2f} ms'}  {shown}", flush=True)
        for v in extra.values():  # lists (a profile's kernels): one line each
            for entry in v if isinstance(v, list) else ():
                print(f"{'':10} {entry}", flush=True)

    def ms(self, section: str, name: str) -> float | None:
        row = self.results.find("gpu", section=section, name=name)
        return row["ms"] if row else None

    def skip(self, need_s: float, what: str) -> bool:
        if self.left() < need_s:
            self.add("skipped", what, None, reason=f"budget ({self.left():.0f} s left, ~{need_s:.0f} s needed)")
            return True
        return False


def _error(e: Exception, n: int = 300) -> str:
    return f"{type(e).__name__}: {str(e)[:n]}"


# ------------------------------------------------------------------------------------------ the benchmark


def run(results: Results, basicsr_src: str | None, budget_s: float, tiny: bool, study: bool = False,
        rounds: int = 1) -> None:
    report = Report(results, budget_s)
    on_gpu = jax.default_backend() == "gpu"
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind if on_gpu else dev} ({jax.default_backend()}), jax {jax.__version__}, "
          f"budget {budget_s:.0f} s{', tiny shapes' if tiny else ''}; Pallas backward atomics "
          f"{dcn_pallas.BACKWARD_ATOMICS}", flush=True)
    torch = None if study else import_torch()
    tdev = "cuda" if (torch is not None and torch.cuda.is_available()) else "cpu"
    if torch is not None:
        torch.backends.cudnn.benchmark = True  # as basicsr/train.py and test.py set it
        if tdev == "cpu":
            torch.set_num_threads(os.cpu_count())
    tsync = (lambda _: torch.cuda.synchronize()) if tdev == "cuda" else (lambda _: None)
    bsr = None
    if torch is not None and basicsr_src:
        from tools.basicsr_source import load_basicsr_edvr
        bsr = load_basicsr_edvr(basicsr_src)
    elif torch is not None:
        print("BasicSR half skipped: pass --basicsr-src (BasicSR 1.4.2's source: benchmarks/README.md)", flush=True)

    # ---------------------------------------------------------------- bf16 matmul ceiling
    n = 512 if tiny else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    ms = timeit(matmul, a, a).median_ms
    peak = 2 * n ** 3 / (ms * 1e-3)
    report.add("matmul", f"bf16 {n}x{n}x{n}", ms, tflops=peak / 1e12)
    del a

    # ---------------------------------------------------------------- correctness of the kernels here
    shapes = [(1, 12, 16, 16)] if tiny else [(16, 64, 64, 64), (1, 180, 320, 64), (1, 180, 320, 128)]
    impls = ["gather", "pallas"]
    x, off, mask, kern, bias = dcn_inputs(shapes[0], jnp.float32)
    value_and_grads = {impl: jax.jit(jax.value_and_grad(
        lambda *a, impl=impl: jnp.sum(jnp.sin(modulated_deform_conv(*a, options=DCNOptions(impl=impl)))),
        argnums=(0, 1, 2, 3, 4))) for impl in impls}
    try:
        vb, gb = value_and_grads["gather"](x, off, mask, kern, bias)
        va, ga = value_and_grads["pallas"](x, off, mask, kern, bias)
        errs = {n_: float(jnp.linalg.norm(p - q) / (jnp.linalg.norm(q) + 1e-30))
                for n_, p, q in zip(("x", "offset", "mask", "kernel", "bias"), ga, gb)}
        report.add("check", f"DCN pallas vs gather f32 {shapes[0]} rel. L2", None,
                   loss=float(abs(va - vb) / abs(vb)), **{f"g_{k}": v for k, v in errs.items()})
    except Exception as e:  # noqa: BLE001
        report.add("check", "DCN pallas kernels FAILED", None, error=_error(e))
        impls = ["gather"]

    # ---------------------------------------------------------------- the DCN op
    def f32sum(y):
        return y.astype(jnp.float32).sum()

    def dcn_table(shape_list, need_s):
        tv = None
        if torch is not None:
            import torchvision
            tv = torchvision.ops.deform_conv2d
        for shape in shape_list:
            for dt in (jnp.float32, jnp.bfloat16):
                tag = f"{shape} {jnp.dtype(dt).name}"
                if report.skip(need_s, f"DCN {tag}"):
                    continue
                x, off, mask, kern, bias = dcn_inputs(shape, dt)
                tc = timeit(jax.jit(conv3x3), x, kern).median_ms
                tcg = timeit(jax.jit(jax.grad(lambda x, k: f32sum(conv3x3(x, k)), argnums=(0, 1))), x, kern).median_ms
                report.add("dcn", f"lax.conv fwd {tag}", tc)
                report.add("dcn", f"lax.conv fwd+bwd {tag}", tcg)
                for impl in impls:
                    dcn = functools.partial(modulated_deform_conv, options=DCNOptions(impl=impl))
                    try:
                        t = timeit(jax.jit(dcn), x, off, mask, kern, bias).median_ms
                        report.add("dcn", f"{impl} fwd {tag}", t, vs_conv=t / tc)
                        grad = jax.jit(jax.grad(lambda *a, dcn=dcn: f32sum(dcn(*a)), argnums=(0, 1, 2, 3, 4)))
                        t = timeit(grad, x, off, mask, kern, bias).median_ms
                        report.add("dcn", f"{impl} fwd+bwd {tag}", t, vs_conv=t / tcg)
                    except Exception as e:  # noqa: BLE001
                        report.add("dcn", f"{impl} {tag} FAILED", None, error=_error(e))
                if tv is not None:
                    tdt = torch.float32 if dt == jnp.float32 else torch.float16
                    b, h, w, c = shape
                    tx = torch.randn(b, c, h, w, device=tdev, dtype=tdt, requires_grad=True)
                    toff = (2.0 * torch.randn(b, 8 * 18, h, w, device=tdev, dtype=tdt)).requires_grad_()
                    tmask = torch.rand(b, 8 * 9, h, w, device=tdev, dtype=tdt, requires_grad=True)
                    tw = (0.05 * torch.randn(c, c, 3, 3, device=tdev, dtype=tdt)).requires_grad_()
                    tb = torch.zeros(c, device=tdev, dtype=tdt, requires_grad=True)
                    try:
                        with torch.no_grad():
                            t = timeit(lambda: tv(tx, toff, tw, tb, padding=1, mask=tmask), sync=tsync).median_ms
                        report.add("dcn", f"torchvision fwd {tag}", t, vs_conv=t / tc, torch_dtype=str(tdt))
                        t = timeit(lambda: tv(tx, toff, tw, tb, padding=1, mask=tmask).float().sum().backward(),
                                   sync=tsync).median_ms
                        report.add("dcn", f"torchvision fwd+bwd {tag}", t, vs_conv=t / tcg, torch_dtype=str(tdt))
                    except Exception as e:  # noqa: BLE001
                        report.add("dcn", f"torchvision {tag} FAILED", None, error=_error(e, 200))
                    del tx, toff, tmask, tw, tb

    if not study:
        dcn_table(shapes[:2], 20)

    # ---------------------------------------------------------------- EDVR-M
    hw = (16, 16) if tiny else (180, 320)
    lr = 16 if tiny else 64
    clips = (1, 2) if tiny else (1, 8)
    batches = (1, 2) if tiny else (8, 32)
    _, state, _ = harness.edvr_m_train_step(1, lr_size=lr, tiny=tiny)  # the parameters of every item below
    params = state["params"]
    t_model = None
    if bsr is not None:
        t_model = bsr.EDVR(num_in_ch=3, num_out_ch=3, **{**PRESETS["edvr_m"], **(harness.TINY if tiny else {})})
        t_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_basicsr(params).items()})
        t_model = t_model.to(tdev)

    flop_cache: dict = {}

    def flops_of(kind: str, size: int) -> float:
        """The FLOPs of one call, counted on the gather DCN (same for f32 and bf16)."""
        if (kind, size) not in flop_cache:
            gather = DCNOptions(impl="gather")
            try:
                if kind == "train":
                    fn, *args = harness.edvr_m_train_step(size, dcn=gather, lr_size=lr, tiny=tiny, abstract=True)
                else:
                    fn, *args = harness.edvr_inference(size, dcn=gather, hw=hw, tiny=tiny, abstract=True)
                flop_cache[kind, size] = harness.count_flops(fn, *args)
            except Exception as e:  # noqa: BLE001
                print(f"(FLOP count failed: {e})", flush=True)
                flop_cache[kind, size] = float("nan")
        return flop_cache[kind, size]

    def jax_infer(n_clips, dt, impl):
        apply, p, x = harness.edvr_inference(n_clips, dt, DCNOptions(impl=impl), hw=hw, tiny=tiny, params=params)
        compiled = apply.lower(p, x).compile()
        return timeit(compiled, p, x).median_ms, functools.partial(compiled, p, x)

    def jax_train(batch, dt, impl):
        step, s, data = harness.edvr_m_train_step(batch, dt, DCNOptions(impl=impl), lr_size=lr, tiny=tiny, state=state)
        call = harness.stepping(step.lower(s, data).compile(), s, data)
        return timeit(call).median_ms, call

    def torch_infer(n_clips, amp):
        x = torch.rand(n_clips, 5, 3, *hw, device=tdev)
        t_model.eval()

        def call():
            with torch.no_grad(), torch.autocast(tdev, dtype=torch.float16 if tdev == "cuda" else torch.bfloat16,
                                                 enabled=amp):
                return t_model(x)
        return timeit(call, sync=tsync).median_ms

    def torch_train(batch, amp):
        t_model.train()
        opt = torch.optim.Adam(t_model.parameters(), lr=harness.LEARNING_RATE, betas=(0.9, 0.99))
        scaler = torch.amp.GradScaler(tdev, enabled=amp and tdev == "cuda")
        lq = torch.rand(batch, 5, 3, lr, lr, device=tdev)
        gt = torch.rand(batch, 3, 4 * lr, 4 * lr, device=tdev)

        def call():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(tdev, dtype=torch.float16 if tdev == "cuda" else torch.bfloat16, enabled=amp):
                out = t_model(lq)
            loss = torch.sum(torch.sqrt((out.float() - gt) ** 2 + 1e-12))  # BasicSR's Charbonnier, sum
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return timeit(call, sync=tsync).median_ms

    profiled: set[str] = set()  # the first timed training step and inference

    def item(kind, size, side, dt_or_amp, need_s, impl=None):
        what = f"{kind} {'clips' if kind == 'infer' else 'batch'} {size} {side} " + \
            (("amp" if dt_or_amp else "f32") if side == "basicsr" else f"{jnp.dtype(dt_or_amp).name} {impl}")
        if report.skip(need_s, what):
            return
        if side == "basicsr" and (t_model is None or (dt_or_amp and tdev == "cpu")):
            return  # no BasicSR, or AMP on CPU (torchvision's deform_conv2d has no CPU half kernel)
        try:
            if side == "basicsr":
                report.add(kind, what, (torch_infer if kind == "infer" else torch_train)(size, dt_or_amp))
                if tdev == "cuda":
                    torch.cuda.empty_cache()
                return
            ms, call = (jax_infer if kind == "infer" else jax_train)(size, dt_or_amp, impl)
            flops = flops_of(kind, size)
            extra = dict(tflops=flops / ms / 1e9, of_bf16_peak=flops / (ms * 1e-3) / peak) if np.isfinite(flops) else {}
            report.add(kind, what, ms, gflop=flops / 1e9, **extra)
            if kind not in profiled and report.left() > 30:
                profiled.add(kind)
                prof = kernel_profile(call)
                if prof is None:
                    print("  (profile: no device kernels in the trace)", flush=True)
                else:
                    categories = {f"cat {k}": round(v, 3) for k, v in prof["categories"].items()}
                    report.add("profile", f"{what}: device kernels per {'step' if kind == 'train' else 'call'}",
                               prof["total"], wall_ms=ms, **categories,
                               top=[(round(v, 3), n[:80]) for v, n in prof["kernels"][:12]])
        except Exception as e:  # noqa: BLE001
            report.add(kind, what + " FAILED", None, error=_error(e))

    big_b, small_b = batches[1], batches[0]
    big_c, small_c = clips[1], clips[0]
    if study:
        plan = [("train", big_b, dt) for dt in (jnp.bfloat16, jnp.float32)]
        plan += [("infer", c, dt) for c in (big_c, small_c) for dt in (jnp.bfloat16, jnp.float32)]
        for _ in range(rounds):
            for kind, size, dt in plan:
                for impl in impls:
                    item(kind, size, "jax", dt, 25, impl)
                    jax.clear_caches()
        print(f"\n{'EDVR-M, median ms (each round)':34} {'gather':>20} {'pallas':>20}")
        for kind, size, dt in plan:
            unit = "clips" if kind == "infer" else "batch"
            times = [" / ".join(f"{r['ms']:.2f}" for r in results.rows if r["bench"] == "gpu" and r["ms"] and
                                r["name"] == f"{kind} {unit} {size} jax {jnp.dtype(dt).name} {impl}") or "-"
                     for impl in ("gather", "pallas")]
            print(f"{kind + ' ' + unit + ' ' + str(size) + ' ' + jnp.dtype(dt).name:34} {times[0]:>20} {times[1]:>20}")
        print(f"(elapsed {time.perf_counter() - report.start:.0f} s)", flush=True)
        return

    kimpl = "pallas" if "pallas" in impls else "gather"  # the kernels, when they work here
    jimpl = "auto" if kimpl == "pallas" else "gather"  # the default, timed against BasicSR
    if t_model is not None:  # the whole model against BasicSR on this device
        try:
            x = jax.random.uniform(jax.random.key(5), (1, 5, *hw, 3))
            apply, p, _ = harness.edvr_inference(1, dcn=DCNOptions(impl=kimpl), hw=hw, tiny=tiny, params=params)
            ours = np.asarray(apply(p, x))
            with torch.no_grad():
                t_model.eval()
                ref = t_model(torch.from_numpy(np.asarray(x).transpose(0, 1, 4, 2, 3).copy()).to(tdev))
            ref = ref.cpu().numpy().transpose(0, 2, 3, 1)
            report.add("check", f"EDVR f32 {kimpl} vs BasicSR rel. L2", None,
                       rel_l2=float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
                       max_abs=float(np.abs(ours - ref).max()))
        except Exception as e:  # noqa: BLE001
            report.add("check", "EDVR vs BasicSR FAILED", None, error=_error(e))

    plan = [("train", big_b, 60, 20), ("infer", big_c, 40, 15), ("train", small_b, 60, 15), ("infer", small_c, 40, 10)]
    for kind, size, need, need_torch in plan:
        item(kind, size, "jax", jnp.bfloat16, need, jimpl)
        item(kind, size, "basicsr", True, need_torch)
        item(kind, size, "jax", jnp.float32, need, jimpl)
        item(kind, size, "basicsr", False, need_torch)
        jax.clear_caches()
    if jimpl == "auto":  # the whole model with the kernels for both passes, and with the gather, for comparison
        for impl in ("pallas", "gather"):
            item("train", big_b, "jax", jnp.bfloat16, 60, impl)
            item("infer", big_c, "jax", jnp.bfloat16, 40, impl)
            jax.clear_caches()
    dcn_table(shapes[2:], 45)  # EDVR-L's channel count, last

    # ---------------------------------------------------------------- the table
    print("\n" + "=" * 100)
    print(f"edvr-jax vs BasicSR 1.4.2 on {dev.device_kind if on_gpu else dev}, median ms "
          f"(bf16 matmul ceiling {peak / 1e12:.3g} TFLOP/s)")
    print(f"{'DCN op (8 groups)':34} {'conv':>8} {'gather':>8} {'ratio':>6} {'pallas':>8} {'ratio':>6} "
          f"{'torchvision':>11}")
    fmt = lambda v, width=8: f"{v:{width}.2f}" if v else f"{'-':>{width}}"  # noqa: E731
    for shape in shapes:
        for dt in ("float32", "bfloat16"):
            for pas in ("fwd", "fwd+bwd"):
                tag = f"{shape} {dt}"
                c = report.ms("dcn", f"lax.conv {pas} {tag}")
                if c is None:
                    continue
                g, p, t = (report.ms("dcn", f"{impl} {pas} {tag}") for impl in ("gather", "pallas", "torchvision"))
                rat = lambda v: f"{v / c:6.2f}" if v else f"{'-':>6}"  # noqa: E731
                print(f"{pas + ' ' + tag:34} {fmt(c)} {fmt(g)} {rat(g)} {fmt(p)} {rat(p)} {fmt(t):>11}")
    print(f"\n{'EDVR-M':30} {'jax f32':>9} {'jax bf16':>9} {'bf16 gain':>9} {'BasicSR f32':>11} {'AMP':>8} "
          f"{'best vs best':>12}")
    for kind, sizes in (("infer", clips), ("train", batches)):
        unit = "clips" if kind == "infer" else "batch"
        for size in sizes:
            j32, j16 = (report.ms(kind, f"{kind} {unit} {size} jax {dt} {jimpl}") for dt in ("float32", "bfloat16"))
            b32, b16 = (report.ms(kind, f"{kind} {unit} {size} basicsr {p}") for p in ("f32", "amp"))
            gain = f"{j32 / j16:9.2f}" if j32 and j16 else f"{'-':>9}"
            bj = min([v for v in (j32, j16) if v] or [0])
            bb = min([v for v in (b32, b16) if v] or [0])
            best = f"{bb / bj:11.2f}x" if bj and bb else f"{'-':>12}"
            print(f"{kind + ' ' + unit + ' ' + str(size):30} {fmt(j32, 9)} {fmt(j16, 9)} {gain} {fmt(b32, 11)} "
                  f"{fmt(b16)} {best}")
    print(f"(jax DCN: {jimpl}; elapsed {time.perf_counter() - report.start:.0f} s)", flush=True)
