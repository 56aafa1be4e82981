"""The accelerator side-by-side: edvr-jax (gather and Pallas DCN) against BasicSR 1.4.2, one process.

    python benchmarks/run.py gpu --basicsr-src benchmarks/.basicsr [--budget 480] [--tiny]

Prints one line per result as it goes, then one table; appends every result to
benchmarks/results.jsonl (bench "gpu", with the device). Bounds its own time:
items run in order of importance and the rest are skipped once ``--budget``
seconds are spent (compilation included). ``--tiny``: small shapes and a small
EDVR, for checking the script on a CPU (the Pallas kernels then run in Pallas
interpret mode, and torch on the CPU).

Imports only edvr_jax's models, ops and convert (no ml_collections, grain,
TensorFlow, TFDS or av: the accelerator image has none of them), and torch /
torchvision / BasicSR's source only for the PyTorch half, which is skipped when
they are missing.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

BLOCKED = ("ml_collections", "grain", "tensorflow", "tensorflow_datasets", "av", "array_record", "clu")


class _Blocker:
    """Import hook that fails imports of packages the accelerator image lacks."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"benchmarks/gpu.py must not import {name} (absent from the accelerator image)")
        return None


def _import_edvr():
    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    try:
        from edvr_jax import training
        from edvr_jax.convert import from_basicsr
        from edvr_jax.models import EDVR, edvr_from_preset
        from edvr_jax.ops import deform_conv
        from edvr_jax.ops.deform_conv import modulated_deform_conv
        from edvr_jax.optim import make_optimizer
    finally:
        sys.meta_path.remove(blocker)
    return training, make_optimizer, from_basicsr, EDVR, edvr_from_preset, deform_conv, modulated_deform_conv


training, make_optimizer, from_basicsr, EDVR, edvr_from_preset, deform_conv, modulated_deform_conv = _import_edvr()


# ------------------------------------------------------------------------------------------ plumbing


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


class Results:
    def __init__(self, record):
        self.rows, self.record = [], record

    def add(self, section: str, name: str, ms: float | None, **extra):
        row = dict(section=section, name=name, ms=ms, **extra)
        self.rows.append(row)
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
                         if not isinstance(v, list))
        print(f"[{section:7}] {name:52} {'-' if ms is None else f'{ms:9.2f} ms'}  {shown}", flush=True)
        for v in extra.values():  # lists (a profile's kernels): one line each
            for entry in v if isinstance(v, list) else ():
                print(f"{'':10} {entry}", flush=True)
        self.record("gpu", row)

    def get(self, section: str, name: str) -> float | None:
        for r in self.rows:
            if r["section"] == section and r["name"] == name:
                return r["ms"]
        return None


def time_jax(fn, *args, min_reps: int = 3, max_reps: int = 20, target_s: float = 1.0) -> tuple[float, float]:
    """(median ms over timed calls, compile + first call s) of a jitted ``fn``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < target_s):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, first


def time_torch(fn, sync, min_reps: int = 3, max_reps: int = 20, target_s: float = 1.0) -> float:
    fn()
    fn()
    sync()
    times = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < target_s):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def with_impl(impl: str):
    """Context manager: ``modulated_deform_conv(impl="auto")`` resolves to ``impl`` while tracing;
    ``"gather:direct"`` also sets the accelerator gather's offset-gradient form (``OFFSET_GRAD_ENV``)."""
    impl, _, offset_grad = impl.partition(":")
    settings = {deform_conv.IMPL_ENV: impl, deform_conv.OFFSET_GRAD_ENV: offset_grad or None}

    class _Ctx:
        def __enter__(self):
            self.old = {k: os.environ.get(k) for k in settings}
            self._set(settings)

        def __exit__(self, *exc):
            self._set(self.old)

        @staticmethod
        def _set(values):
            for k, v in values.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return _Ctx()


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
    if "triton" in n or "pallas" in n or "kernel" in n:
        return "Pallas/Triton"
    return "other XLA fusions"


def kernel_profile(call, calls: int = 3, trace_dir: str | None = None) -> dict | None:
    """GPU kernel time per call of ``call`` from a ``jax.profiler`` trace: ``{"total": ms, "kernels":
    [(ms, name)], "categories": {category: ms}}``, or None when the trace has no device kernels (CPU)."""
    import glob
    import gzip
    import json
    import tempfile

    call()
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="edvr_profile_")
    with jax.profiler.trace(trace_dir):
        for _ in range(calls):
            jax.block_until_ready(call())
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not files:
        return None
    events = json.load(gzip.open(files[0]))["traceEvents"]
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
        category = kernel_category(name)
        categories[category] = categories.get(category, 0.0) + ms
    return {"total": sum(per_name.values()), "kernels": sorted(((ms, n) for n, ms in per_name.items()), reverse=True),
            "categories": categories}


def dcn_inputs(shape, dt):
    """One DCN's ``(x, offset, mask, kernel, bias)`` for ``x`` of ``shape`` (8 groups, C -> C, 3x3): offsets
    N(0, 2) px in float32, the mask a sigmoid of N(0, 1), the kernel N(0, 0.05), no bias."""
    b, h, w, c = shape
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(keys[0], (b, h, w, c), dt)
    off = 2.0 * jax.random.normal(keys[1], (b, h, w, 8 * 18))
    mask = jax.nn.sigmoid(jax.random.normal(keys[2], (b, h, w, 8 * 9)))
    kern = (0.05 * jax.random.normal(keys[3], (3, 3, c, c))).astype(dt)
    return x, off, mask, kern, jnp.zeros((c,), dt)


def conv3x3(x, k):
    """The plain conv of a DCN's shape (stride 1, padding 1), the DCN's yardstick."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def count_flops(fn, *args) -> float:
    """Multiply-add FLOPs (x2) of the convolutions and matmuls in ``fn``'s jaxpr (cond: the larger
    branch; scan: its body times its length).

    Pallas kernels count 0, so trace with the gather DCN (whose matmul is counted); the
    bilinear sampling itself is not counted. ``Lowered.cost_analysis`` is not used: on GPU
    it does not count cuDNN convolutions.
    """
    def walk(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
                dn = eqn.params["dimension_numbers"]
                k_spatial = np.prod([rhs.shape[i] for i in dn.rhs_spec[2:]])
                in_ch = rhs.shape[dn.rhs_spec[1]]
                total += 2.0 * np.prod(out.shape) * k_spatial * in_ch
            elif name == "dot_general":
                (lc, _), (lb, _) = eqn.params["dimension_numbers"]
                a = eqn.invars[0].aval
                contract = np.prod([a.shape[i] for i in lc]) if lc else 1
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contract
            elif name == "cond":
                total += max(walk(b.jaxpr) for b in eqn.params["branches"])
            elif name == "scan":  # the CPU's row-chunked DCN: the body runs `length` times
                total += eqn.params["length"] * walk(eqn.params["jaxpr"].jaxpr)
            else:
                for p in eqn.params.values():
                    for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                        if isinstance(sub, jax.extend.core.ClosedJaxpr):
                            total += walk(sub.jaxpr)
                        elif isinstance(sub, jax.extend.core.Jaxpr):
                            total += walk(sub)
        return total

    with with_impl("gather"):
        return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def load_basicsr_edvr(src: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from basicsr_source import load_basicsr_edvr as load

    return load(src)


def _torch():
    """(torch, torchvision) or None when they (or torchvision's compiled ops) are missing."""
    try:
        import torch
        import torchvision
        torch.ops.torchvision.deform_conv2d  # noqa: B018  raises when the compiled ops do not load
        return torch, torchvision
    except Exception as e:  # noqa: BLE001
        print(f"PyTorch half skipped: torch/torchvision with compiled ops not importable ({e})", flush=True)
        return None


# ------------------------------------------------------------------------------------------ the benchmark


def run(basicsr_src: str | None, budget_s: float, tiny: bool, record, study: bool = False) -> None:
    budget = Budget(budget_s)
    res = Results(record)
    on_gpu = jax.default_backend() == "gpu"
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind if on_gpu else dev} ({jax.default_backend()}), jax {jax.__version__}, "
          f"budget {budget_s:.0f} s{', tiny shapes' if tiny else ''}; Pallas backward atomics "
          f"{deform_conv.deform_conv_pallas.BACKWARD_ATOMICS}", flush=True)
    tt = _torch()
    torch = tt[0] if tt else None
    tdev = "cuda" if (torch is not None and torch.cuda.is_available()) else "cpu"
    if torch is not None:
        torch.backends.cudnn.benchmark = True  # as basicsr/train.py and test.py set it
        if tdev == "cpu":
            torch.set_num_threads(os.cpu_count())
    tsync = (lambda: torch.cuda.synchronize()) if tdev == "cuda" else (lambda: None)
    bsr = None
    if torch is not None and basicsr_src:
        bsr = load_basicsr_edvr(Path(basicsr_src))
    elif torch is not None:
        print("BasicSR half skipped: pass --basicsr-src (BasicSR 1.4.2 source: benchmarks/README.md)", flush=True)

    def skip(need_s: float, what: str) -> bool:
        if budget.left() < need_s:
            res.add("skipped", what, None, reason=f"budget ({budget.left():.0f} s left, ~{need_s:.0f} s needed)")
            return True
        return False

    # ---------------------------------------------------------------- bf16 matmul ceiling
    n = 512 if tiny else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    ms, _ = time_jax(jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16)),
                     a, a)
    peak = 2 * n ** 3 / (ms * 1e-3)
    res.add("matmul", f"bf16 {n}x{n}x{n}", ms, tflops=peak / 1e12)
    del a

    # ---------------------------------------------------------------- DCN op
    shapes = [(1, 12, 16, 16)] if tiny else [(16, 64, 64, 64), (1, 180, 320, 64), (1, 180, 320, 128)]
    impls = ["gather", "pallas"]

    def f32sum(y):
        return y.astype(jnp.float32).sum()

    # Correctness on this device: Pallas against the gather, values and all gradients.
    x, off, mask, kern, bias = dcn_inputs(shapes[0], jnp.float32)
    vg = {impl: jax.jit(jax.value_and_grad(
        lambda *a, impl=impl: jnp.sum(jnp.sin(modulated_deform_conv(*a, impl=impl))), argnums=(0, 1, 2, 3, 4)))
        for impl in impls}
    if study:
        impls = ["gather", "pallas", "pallas-forward", "pallas-backward"]
        vg = {impl: jax.jit(jax.value_and_grad(
            lambda *a, impl=impl: jnp.sum(jnp.sin(modulated_deform_conv(*a, impl=impl))), argnums=(0, 1, 2, 3, 4)))
            for impl in impls}
    try:
        vb, gb = vg["gather"](x, off, mask, kern, bias)
        for impl in impls[1:]:
            va, ga = vg[impl](x, off, mask, kern, bias)
            errs = {n_: float(jnp.linalg.norm(p - q) / (jnp.linalg.norm(q) + 1e-30))
                    for n_, p, q in zip(("x", "offset", "mask", "kernel", "bias"), ga, gb)}
            res.add("check", f"DCN {impl} vs gather f32 {shapes[0]} rel. L2", None,
                    loss=float(abs(va - vb) / abs(vb)), **{f"g_{k}": v for k, v in errs.items()})
    except Exception as e:  # noqa: BLE001
        res.add("check", "DCN pallas kernels FAILED", None, error=f"{type(e).__name__}: {str(e)[:300]}")
        impls = ["gather"]

    tv = None
    if torch is not None:
        import torchvision
        tv = torchvision.ops.deform_conv2d

    def dcn_table(shape_list, need_s):
        for shape in shape_list:
            for dt in (jnp.float32, jnp.bfloat16):
                if skip(need_s, f"DCN {shape} {jnp.dtype(dt).name}"):
                    continue
                tag = f"{shape} {jnp.dtype(dt).name}"
                x, off, mask, kern, bias = dcn_inputs(shape, dt)
                conv_f = jax.jit(conv3x3)
                conv_g = jax.jit(jax.grad(lambda x, k: f32sum(conv3x3(x, k)), argnums=(0, 1)))
                tc, _ = time_jax(conv_f, x, kern)
                tcg, _ = time_jax(conv_g, x, kern)
                res.add("dcn", f"lax.conv fwd {tag}", tc)
                res.add("dcn", f"lax.conv fwd+bwd {tag}", tcg)
                for impl in impls:
                    f = jax.jit(lambda *a, impl=impl: modulated_deform_conv(*a, impl=impl))
                    g = jax.jit(jax.grad(lambda *a, impl=impl: f32sum(modulated_deform_conv(*a, impl=impl)),
                                         argnums=(0, 1, 2, 3, 4)))
                    try:
                        t, _ = time_jax(f, x, off, mask, kern, bias)
                        res.add("dcn", f"{impl} fwd {tag}", t, vs_conv=t / tc)
                        t, _ = time_jax(g, x, off, mask, kern, bias)
                        res.add("dcn", f"{impl} fwd+bwd {tag}", t, vs_conv=t / tcg)
                    except Exception as e:  # noqa: BLE001
                        res.add("dcn", f"{impl} {tag} FAILED", None, error=f"{type(e).__name__}: {str(e)[:300]}")
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
                            t = time_torch(lambda: tv(tx, toff, tw, tb, padding=1, mask=tmask), tsync)
                        res.add("dcn", f"torchvision fwd {tag}", t, vs_conv=t / tc, torch_dtype=str(tdt))
                        t = time_torch(lambda: tv(tx, toff, tw, tb, padding=1, mask=tmask).float().sum().backward(), tsync)
                        res.add("dcn", f"torchvision fwd+bwd {tag}", t, vs_conv=t / tcg, torch_dtype=str(tdt))
                    except Exception as e:  # noqa: BLE001
                        res.add("dcn", f"torchvision {tag} FAILED", None, error=f"{type(e).__name__}: {str(e)[:200]}")
                    del tx, toff, tmask, tw, tb

    if not study:
        dcn_table(shapes[:2], 20)

    # ---------------------------------------------------------------- EDVR-M
    cfg = dict(num_feat=16, num_extract_block=1, num_reconstruct_block=1) if tiny else \
        dict(num_feat=64, num_reconstruct_block=10)
    hw = (16, 16) if tiny else (180, 320)
    lr = 16 if tiny else 64
    clips = (1, 2) if tiny else (1, 8)
    batches = (1, 2) if tiny else (8, 32)
    model32 = EDVR(**cfg)
    params = jax.jit(model32.init)(jax.random.key(0), jnp.zeros((1, 5, lr, lr, 3)))["params"]
    schedule = lambda n: 4e-4  # noqa: E731
    tx_opt = make_optimizer(schedule)  # BasicSR's Adam (0.9, 0.99), as train.py builds it

    t_model = None
    if bsr is not None:
        t_model = bsr.EDVR(num_in_ch=3, num_out_ch=3, **cfg).to(tdev)
        # conv_offset drawn at random, so that the DCNs really sample: mean |offset| about 0.4 px (EDVR-M at
        # 64x64, this draw in JAX), different for every group and tap.
        with torch.no_grad():
            for name, p in t_model.named_parameters():
                if "conv_offset" in name:
                    p.normal_(0.0, 0.02 if name.endswith("weight") else 0.5)
        sd = {k: v.detach().cpu().numpy() for k, v in t_model.state_dict().items()}
        params = from_basicsr(sd, model32)["params"]

    flop_cache: dict = {}

    def flops_of(fn, *args):
        key = tuple(a.shape for a in jax.tree.leaves(args)[-2:])  # the inputs' shapes
        if key in flop_cache:
            return flop_cache[key]
        try:
            flop_cache[key] = count_flops(fn, *args)
            return flop_cache[key]
        except Exception as e:  # noqa: BLE001
            print(f"(FLOP count failed: {e})", flush=True)
            return float("nan")

    def jax_infer(n_clips, dt, impl):
        model = EDVR(**cfg, dtype=dt)
        x = jax.random.uniform(jax.random.key(2), (n_clips, 5, *hw, 3))
        fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
        with with_impl(impl):
            compiled = jax.jit(fn).lower(params, x).compile()
        ms, _ = time_jax(compiled, params, x)
        return ms, flops_of(fn, params, x), functools.partial(compiled, params, x)

    def jax_train(batch, dt, impl):
        model = EDVR(**cfg, dtype=dt)
        lq = jax.random.uniform(jax.random.key(3), (batch, 5, lr, lr, 3))
        gt = jax.random.uniform(jax.random.key(4), (batch, 4 * lr, 4 * lr, 3))

        # train.py's own step: Charbonnier (sum), Adam, the NaN guard and the logged metrics.
        step = functools.partial(training.train_step, model=model, tx=tx_opt, schedule=schedule)
        state = {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx_opt.init(params)}
        batch = {"lq": lq, "gt": gt}
        with with_impl(impl):
            compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
        holder = [jax.tree.map(jnp.copy, state)]

        def call():
            holder[0], metrics = compiled(holder[0], batch)
            return metrics["loss"]
        ms, _ = time_jax(call)
        return ms, flops_of(step, state, batch), call

    def torch_infer(n_clips, amp):
        x = torch.rand(n_clips, 5, 3, *hw, device=tdev)
        t_model.eval()

        def call():
            with torch.no_grad(), torch.autocast(tdev, dtype=torch.float16 if tdev == "cuda" else torch.bfloat16,
                                                 enabled=amp):
                return t_model(x)
        return time_torch(call, tsync)

    def torch_train(batch, amp):
        t_model.train()
        opt = torch.optim.Adam(t_model.parameters(), lr=4e-4, betas=(0.9, 0.99))
        scaler = torch.amp.GradScaler(tdev, enabled=amp and tdev == "cuda")
        lq = torch.rand(batch, 5, 3, lr, lr, device=tdev)
        gt = torch.rand(batch, 3, 4 * lr, 4 * lr, device=tdev)

        def call():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(tdev, dtype=torch.float16 if tdev == "cuda" else torch.bfloat16, enabled=amp):
                out = t_model(lq)
            loss = torch.sum(torch.sqrt((out.float() - gt) ** 2 + 1e-12))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return time_torch(call, tsync)

    profiled: set[str] = set()  # the first timed training step and inference (the default, bf16, batch 32 / 8 clips)
    kimpl = "pallas" if "pallas" in impls else "gather"  # the kernels, when they work here
    jimpl = "auto" if kimpl == "pallas" else "gather"  # the default (impl="auto"), timed against BasicSR

    def item(kind, size, side, dt_or_amp, need_s, impl=None):
        what = f"{kind} {'clips' if kind == 'infer' else 'batch'} {size} {side} " + \
            (("amp" if dt_or_amp else "f32") if side == "basicsr" else f"{jnp.dtype(dt_or_amp).name} {impl}")
        if skip(need_s, what):
            return
        if side == "basicsr" and (t_model is None or (dt_or_amp and tdev == "cpu")):
            return  # no BasicSR, or AMP on CPU (torchvision's deform_conv2d has no CPU half kernel)
        try:
            if side == "basicsr":
                ms = (torch_infer if kind == "infer" else torch_train)(size, dt_or_amp)
                res.add(kind, what, ms)
                if tdev == "cuda":
                    torch.cuda.empty_cache()
            else:
                ms, flops, call = (jax_infer if kind == "infer" else jax_train)(size, dt_or_amp, impl)
                extra = {}
                if np.isfinite(flops):
                    extra = dict(tflops=flops / ms / 1e9, of_bf16_peak=flops / (ms * 1e-3) / peak)
                res.add(kind, what, ms, gflop=flops / 1e9, **extra)
                if kind not in profiled and budget.left() > 30:
                    profiled.add(kind)
                    prof = kernel_profile(call)
                    if prof is None:
                        print("  (profile: no device kernels in the trace)", flush=True)
                    else:
                        res.add("profile", f"{what}: device kernels per {'step' if kind == 'train' else 'call'}",
                                prof["total"], wall_ms=ms,
                                **{f"cat {k}": round(v, 3) for k, v in prof["categories"].items()},
                                top=[(round(v, 3), n[:80]) for v, n in prof["kernels"][:12]])
        except Exception as e:  # noqa: BLE001
            res.add(kind, what + " FAILED", None, error=f"{type(e).__name__}: {str(e)[:300]}")

    if study:  # the whole model's step and call with each DCN implementation (no BasicSR)
        big_b, big_c = batches[1], clips[1]
        plan = [("train", big_b, dt, impl) for dt in (jnp.bfloat16, jnp.float32)
                for impl in ("pallas-forward", "pallas-backward", "gather", "gather:direct", "pallas")]
        plan += [("infer", c, dt, impl) for c in (big_c, clips[0]) for dt in (jnp.float32, jnp.bfloat16)
                 for impl in ("gather", "pallas")]
        for kind, size, dt, impl in plan:
            item(kind, size, "jax", dt, 25, impl)
            jax.clear_caches()
        print(f"(elapsed {time.perf_counter() - budget.start:.0f} s)", flush=True)
        return

    if t_model is not None:  # correctness of the whole model on this device
        try:
            x = jax.random.uniform(jax.random.key(5), (1, 5, *hw, 3))
            with with_impl(kimpl):
                ours = np.asarray(jax.jit(lambda p, x: model32.apply({"params": p}, x))(params, x))
            with torch.no_grad():
                t_model.eval()
                ref = t_model(torch.from_numpy(np.asarray(x).transpose(0, 1, 4, 2, 3).copy()).to(tdev))
            ref = ref.cpu().numpy().transpose(0, 2, 3, 1)
            res.add("check", f"EDVR f32 {kimpl} vs BasicSR rel. L2", None,
                    rel_l2=float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
                    max_abs=float(np.abs(ours - ref).max()))
        except Exception as e:  # noqa: BLE001
            res.add("check", "EDVR vs BasicSR FAILED", None, error=f"{type(e).__name__}: {str(e)[:300]}")

    big_b, small_b = batches[1], batches[0]
    big_c, small_c = clips[1], clips[0]
    plan = [
        ("train", big_b, "jax", jnp.bfloat16, 60, jimpl),
        ("train", big_b, "basicsr", True, 20, None),
        ("train", big_b, "jax", jnp.float32, 60, jimpl),
        ("train", big_b, "basicsr", False, 20, None),
        ("infer", big_c, "jax", jnp.bfloat16, 40, jimpl),
        ("infer", big_c, "basicsr", True, 15, None),
        ("infer", big_c, "jax", jnp.float32, 40, jimpl),
        ("infer", big_c, "basicsr", False, 15, None),
        ("train", small_b, "jax", jnp.bfloat16, 60, jimpl),
        ("train", small_b, "basicsr", True, 15, None),
        ("train", small_b, "jax", jnp.float32, 60, jimpl),
        ("train", small_b, "basicsr", False, 15, None),
        ("infer", small_c, "jax", jnp.bfloat16, 40, jimpl),
        ("infer", small_c, "basicsr", True, 10, None),
        ("infer", small_c, "jax", jnp.float32, 40, jimpl),
        ("infer", small_c, "basicsr", False, 10, None),
    ]
    if jimpl == "auto":  # the whole model with the kernels for both passes, and with the gather, for comparison
        plan += [(kind, size, "jax", jnp.bfloat16, need, impl) for impl in ("pallas", "gather")
                 for kind, size, need in (("train", big_b, 60), ("infer", big_c, 40))]
    # The accelerator gather's offset/mask gradient as one fused expression per gradient (default: corner sums).
    plan.append(("train", big_b, "jax", jnp.bfloat16, 60, f"{jimpl}:direct"))
    for kind, size, side, dt, need, impl in plan:
        item(kind, size, side, dt, need, impl)
        jax.clear_caches()
    dcn_table(shapes[2:], 45)  # EDVR-L's channel count, last

    # ---------------------------------------------------------------- the table
    print("\n" + "=" * 100)
    print(f"edvr-jax vs BasicSR 1.4.2 on {dev.device_kind if on_gpu else dev}, median ms "
          f"(bf16 matmul ceiling {peak / 1e12:.3g} TFLOP/s)")
    print(f"{'DCN op (8 groups)':34} {'conv':>8} {'gather':>8} {'ratio':>6} {'pallas':>8} {'ratio':>6} "
          f"{'torchvision':>11}")
    for shape in shapes:
        for dt in ("float32", "bfloat16"):
            for pas in ("fwd", "fwd+bwd"):
                tag = f"{shape} {dt}"
                c = res.get("dcn", f"lax.conv {pas} {tag}")
                if c is None:
                    continue
                g = res.get("dcn", f"gather {pas} {tag}")
                p = res.get("dcn", f"pallas {pas} {tag}")
                t = res.get("dcn", f"torchvision {pas} {tag}")
                fmt = lambda v: f"{v:8.2f}" if v else f"{'-':>8}"  # noqa: E731
                rat = lambda v: f"{v / c:6.2f}" if v else f"{'-':>6}"  # noqa: E731
                print(f"{pas + ' ' + tag:34} {fmt(c)} {fmt(g)} {rat(g)} {fmt(p)} {rat(p)} {fmt(t):>11}")
    print(f"\n{'EDVR-M':30} {'jax f32':>9} {'jax bf16':>9} {'bf16 gain':>9} {'BasicSR f32':>11} {'AMP':>8} "
          f"{'best vs best':>12}")
    for kind, sizes in (("infer", clips), ("train", batches)):
        for size in sizes:
            unit = "clips" if kind == "infer" else "batch"
            j32 = res.get(kind, f"{kind} {unit} {size} jax float32 {jimpl}")
            j16 = res.get(kind, f"{kind} {unit} {size} jax bfloat16 {jimpl}")
            b32 = res.get(kind, f"{kind} {unit} {size} basicsr f32")
            b16 = res.get(kind, f"{kind} {unit} {size} basicsr amp")
            fmt = lambda v: f"{v:9.2f}" if v else f"{'-':>9}"  # noqa: E731
            gain = f"{j32 / j16:9.2f}" if j32 and j16 else f"{'-':>9}"
            bj = min([v for v in (j32, j16) if v] or [0])
            bb = min([v for v in (b32, b16) if v] or [0])
            best = f"{bb / bj:11.2f}x" if bj and bb else f"{'-':>12}"
            print(f"{kind + ' ' + unit + ' ' + str(size):30} {fmt(j32)} {fmt(j16)} {gain} {fmt(b32):>11} {fmt(b16):>8} "
                  f"{best}")
    print(f"(jax DCN: {jimpl}; elapsed {time.perf_counter() - budget.start:.0f} s)", flush=True)
