"""Exporting edvr-jax computations for other platforms (``jax.export``), from any machine.

The DCN picks its implementation when lowering (``DCNOptions(impl="auto")``):
an export for ``("cuda",)`` of a bf16 inference holds the Pallas Triton forward kernel,
any other export (training steps, float32, ``("tpu",)``, ``("cpu",)``) the vectorized gather. Triton kernels are serialized as a custom call
that ``jax.export`` does not guarantee stable across jax versions (Triton IR has no
compatibility promise), so ``export`` allows it explicitly: load such an artifact
with the jax version that wrote it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

#: Custom-call targets of Pallas Triton kernels (the name depends on the jax version).
TRITON_CUSTOM_CALLS = ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi")


def export(fn: Callable, *args: Any, platforms: Sequence[str]) -> jax.export.Exported:
    """``jax.export.export(jax.jit(fn), platforms=platforms)(*args)``, Pallas GPU kernels allowed.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s. Lowering for CUDA needs no GPU with
    jax 0.10 (Triton is compiled when the artifact is compiled on the GPU).
    """
    checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in TRITON_CUSTOM_CALLS]
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return jax.export.export(jitted, platforms=tuple(platforms), disabled_checks=checks)(*args)


def has_triton_kernels(exported: jax.export.Exported) -> bool:
    """Whether an exported module calls Pallas Triton kernels."""
    text = exported.mlir_module()
    return any(t in text for t in TRITON_CUSTOM_CALLS)
