"""EDVR (Wang et al., 2019) with BasicSR's constructor, forward pass and parameter names."""

from __future__ import annotations

import dataclasses
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from edvr_jax.errors import check_arguments
from edvr_jax.models.layers import Conv2d, Dtype, lrelu, residual_blocks
from edvr_jax.models.pcd import PCDAlignment
from edvr_jax.models.predeblur import PredeblurModule
from edvr_jax.models.tsa import TSAFusion
from edvr_jax.ops.dcn import DCNOptions
from edvr_jax.ops.resize import pixel_shuffle, upsample_bilinear

#: Named configurations of the published models (BasicSR's option files).
PRESETS: dict[str, dict[str, Any]] = {
    "edvr_m": dict(num_feat=64, num_reconstruct_block=10),
    "edvr_m_wo_tsa": dict(num_feat=64, num_reconstruct_block=10, with_tsa=False),
    "edvr_l": dict(num_feat=128, num_reconstruct_block=40),
    "edvr_l_wo_tsa": dict(num_feat=128, num_reconstruct_block=40, with_tsa=False),
    "edvr_l_vimeo": dict(num_feat=128, num_frame=7, num_reconstruct_block=40),
    "edvr_l_srblur": dict(num_feat=128, num_reconstruct_block=40, with_predeblur=True),
    "edvr_l_deblur": dict(num_feat=128, num_reconstruct_block=40, hr_in=True, with_predeblur=True),
    # Stage 2 of the two-stage models in the paper: a shallower EDVR over stage-1 outputs.
    "edvr_l_stage2": dict(num_feat=128, num_reconstruct_block=20, hr_in=True, with_predeblur=True),
}


class EDVR(nn.Module):
    """EDVR video restoration network, ``[B, T, H, W, C] -> [B, 4H, 4W, 3]``.

    Arguments and defaults are BasicSR's ``EDVR``; inputs are RGB in [0, 1].
    With ``hr_in`` (deblurring; needs ``with_predeblur``) frames are first reduced
    x4 by strided convs and the output is ``[B, H, W, 3]``. H and W must be
    multiples of 4 (16 with ``hr_in``).

    As in BasicSR, ``conv_last`` always has 3 output channels and ``num_out_ch``
    is accepted but unused, so that the official checkpoints load unchanged.

    Extra (non-BasicSR) attributes: ``dtype`` is the compute dtype (params stay
    float32; the output is float32). Each DCN sows ``intermediates/.../offset_absmean``;
    read them with ``apply(..., mutable=['intermediates'])`` and log BasicSR's blow-up
    warning with ``edvr_jax.models.warn_offsets`` (outside jit, free).
    ``offset_warning=True`` (off by default) logs from inside the jitted graph instead:
    for debugging only (a host callback per DCN: 12-17 % slower on a GPU, and
    ``jax.export`` cannot serialize it). ``dcn``: how the deformable convolutions are computed
    (``edvr_jax.ops.DCNOptions``: implementation, row chunks; the same values whatever it says).
    """

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_frame: int = 5
    deformable_groups: int = 8
    num_extract_block: int = 5
    num_reconstruct_block: int = 10
    center_frame_idx: int | None = None
    hr_in: bool = False
    with_predeblur: bool = False
    with_tsa: bool = True
    dtype: Dtype = jnp.float32
    offset_warning: bool = False
    dcn: DCNOptions = DCNOptions()

    @property
    def center(self) -> int:
        return self.num_frame // 2 if self.center_frame_idx is None else self.center_frame_idx

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this."""
        return 16 if self.hr_in else 4

    @property
    def scale(self) -> int:
        """Output size / input size."""
        return 1 if self.hr_in else 4

    def config(self) -> dict[str, Any]:
        """The BasicSR constructor arguments of this model (JSON-serialisable)."""
        names = ("num_in_ch", "num_out_ch", "num_feat", "num_frame", "deformable_groups", "num_extract_block",
                 "num_reconstruct_block", "center_frame_idx", "hr_in", "with_predeblur", "with_tsa")
        return {n: getattr(self, n) for n in names}

    def input_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """A valid input shape for frames of at least ``height x width`` (rounded up to the size multiple)."""
        m = self.size_multiple
        height, width = -(-height // m) * m, -(-width // m) * m
        return (batch, self.num_frame, height, width, 3 if self.with_predeblur else self.num_in_ch)

    def check_arguments(self) -> None:
        """Raises an ``ArgumentError`` (a ValueError) naming every constructor argument that cannot
        work; ``check_input`` and ``training.validate_config`` both call it."""
        groups = self.deformable_groups
        check_arguments([
            ("num_frame", self.num_frame, self.num_frame >= 1, ">= 1"),
            ("deformable_groups", groups, groups >= 1, ">= 1"),
            ("num_feat", self.num_feat, self.num_feat >= 1 and groups >= 1 and self.num_feat % groups == 0,
             f"a positive multiple of {{deformable_groups}} ({groups})"),
            ("hr_in", self.hr_in, not self.hr_in or self.with_predeblur,
             "False unless {with_predeblur} is True (as in BasicSR, which reduces high-resolution input only "
             "inside the predeblur module)"),
            ("center_frame_idx", self.center_frame_idx,
             self.center_frame_idx is None or 0 <= self.center_frame_idx < self.num_frame,
             f"None or in [0, {self.num_frame})"),
        ])

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raises ValueError naming what is wrong with the arguments or an input of this shape."""
        self.check_arguments()
        if len(shape) != 5:
            raise ValueError(f"EDVR input must be [B, T, H, W, C], got shape {tuple(shape)}")
        _, t, h, w, c = shape
        if t != self.num_frame:
            raise ValueError(f"EDVR was built for num_frame={self.num_frame}, got {t} frames (shape {tuple(shape)})")
        in_ch = 3 if self.with_predeblur else self.num_in_ch
        if c != in_ch:
            raise ValueError(f"EDVR expects {in_ch} input channels, got {c} (shape {tuple(shape)})")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"EDVR{' (hr_in)' if self.hr_in else ''} needs height and width that are multiples of {m}, "
                f"got {h}x{w}; pad the frames (edvr_jax's inference helpers do) or crop them")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        self.check_input(x.shape)
        b, t, h, w, c = x.shape
        nf, dt = self.num_feat, self.dtype
        conv = lambda name, feat=nf, k=3, s=1: Conv2d(feat, k, s, dtype=dt, name=name)  # noqa: E731
        x_center = x[:, self.center].astype(jnp.float32)
        frames = einops.rearrange(x, "b t h w c -> (b t) h w c").astype(dt)

        if self.with_predeblur:
            feat_l1 = conv("conv_1x1", k=1)(
                PredeblurModule(nf, hr_in=self.hr_in, dtype=dt, name="predeblur")(frames))
        else:
            feat_l1 = lrelu(conv("conv_first")(frames))
        feat_l1 = residual_blocks(feat_l1, self.num_extract_block, nf, "feature_extraction", dt)
        feat_l2 = lrelu(conv("conv_l2_2")(lrelu(conv("conv_l2_1", s=2)(feat_l1))))
        feat_l3 = lrelu(conv("conv_l3_2")(lrelu(conv("conv_l3_1", s=2)(feat_l2))))

        # Every frame (the reference too) is aligned to the reference in one batched call; the references
        # go in once per clip.
        feats = (feat_l1, feat_l2, feat_l3)
        refs = [einops.rearrange(f, "(b t) h w c -> b t h w c", t=t)[:, self.center] for f in feats]
        aligned = PCDAlignment(nf, self.deformable_groups, offset_warning=self.offset_warning, dtype=dt,
                               dcn=self.dcn, name="pcd_align")(feats, refs)
        aligned = einops.rearrange(aligned, "(b t) h w c -> b t h w c", t=t)

        if self.with_tsa:
            feat = TSAFusion(nf, t, self.center, dtype=dt, name="fusion")(aligned)
        else:
            feat = conv("fusion", k=1)(einops.rearrange(aligned, "b t h w c -> b h w (t c)"))  # frame-major

        out = residual_blocks(feat, self.num_reconstruct_block, nf, "reconstruction", dt)
        # LeakyReLU before the shuffle (BasicSR: after; elementwise, so identical): XLA fuses it into the
        # shuffle's transpose instead of a separate pass over the largest activations.
        out = pixel_shuffle(lrelu(conv("upconv1", nf * 4)(out)), 2)
        out = pixel_shuffle(lrelu(conv("upconv2", 64 * 4)(out)), 2)
        out = lrelu(conv("conv_hr", 64)(out))
        out = conv("conv_last", 3)(out)
        base = x_center if self.hr_in else upsample_bilinear(x_center, 4)
        return base + out.astype(jnp.float32)


def edvr_from_preset(name: str, **overrides: Any) -> EDVR:
    """``EDVR(**PRESETS[name], **overrides)`` with a clear error for unknown names."""
    if name not in PRESETS:
        raise KeyError(f"unknown EDVR preset {name!r}; known: {sorted(PRESETS)}")
    return EDVR(**{**PRESETS[name], **overrides})


def init_variables(model: nn.Module, rng: jax.Array, height: int = 64, width: int = 64) -> dict:
    """Initialises ``model`` (EDVR or TwoStageEDVR) on a dummy clip; returns ``{'params': ...}``."""
    shape = model.input_shape(1, height, width)
    # Jitted: XLA drops the forward pass that init traces (only the parameters are returned),
    # which is much faster than running it op by op.
    return jax.jit(model.init)(rng, jnp.zeros(shape, jnp.float32))


class TwoStageEDVR(nn.Module):
    """Two-stage EDVR: stage 2, a shallower ``hr_in`` EDVR, refines stage-1 outputs.

    Input ``[B, T1 + T2 - 1, H, W, C]``: stage 1 restores the ``T2`` frames centred
    on each of its windows ``x[:, j : j + T1]`` (run as one batch), the results
    are clipped to [0, 1] (stage 2 was trained on saved stage-1 images), and
    stage 2 restores the centre frame from them. Output ``[B, 4H, 4W, 3]`` (SR) or
    ``[B, H, W, 3]`` (deblur). Params: ``{'stage1': ..., 'stage2': ...}``, each a
    plain EDVR tree (convertible with ``edvr_jax.convert``).

    To restore a whole clip without recomputing stage 1 for overlapping windows
    use ``edvr_jax.Restorer``.
    """

    stage1: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PRESETS["edvr_l"]))
    stage2: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PRESETS["edvr_l_stage2"]))
    dtype: Dtype = jnp.float32
    offset_warning: bool = False
    dcn: DCNOptions = DCNOptions()

    def _stage_kwargs(self, which: int) -> dict[str, Any]:
        cfg = self.stage1 if which == 1 else self.stage2
        return dict(cfg, dtype=self.dtype, offset_warning=self.offset_warning, dcn=self.dcn)

    def stages(self) -> tuple[EDVR, EDVR]:
        """The two EDVRs as unbound modules (``stage.apply({'params': params['stage1']}, x)``)."""
        s1, s2 = (EDVR(**self._stage_kwargs(i), parent=None) for i in (1, 2))
        if not s2.hr_in:
            raise ValueError("stage 2 of a two-stage EDVR must take stage-1 outputs at full size (hr_in=True)")
        return s1, s2

    @property
    def num_frame(self) -> int:
        s1, s2 = self.stages()
        return s1.num_frame + s2.num_frame - 1

    def input_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        s1, _ = self.stages()
        return (batch, self.num_frame) + s1.input_shape(batch, height, width)[2:]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        self.stages()  # validates the pair
        s1 = EDVR(**self._stage_kwargs(1), name="stage1")
        s2 = EDVR(**self._stage_kwargs(2), name="stage2")
        t1, t2 = s1.num_frame, s2.num_frame
        if x.ndim != 5 or x.shape[1] != t1 + t2 - 1:
            raise ValueError(f"TwoStageEDVR expects [B, {t1 + t2 - 1}, H, W, C] (stage-1 window {t1} + "
                             f"stage-2 window {t2} - 1), got shape {x.shape}")
        b = x.shape[0]
        windows = jnp.stack([x[:, j:j + t1] for j in range(t2)], axis=1)  # [B, T2, T1, H, W, C]
        stage1_out = s1(einops.rearrange(windows, "b t2 t1 h w c -> (b t2) t1 h w c"))
        return s2(einops.rearrange(jnp.clip(stage1_out, 0.0, 1.0), "(b t2) h w c -> b t2 h w c", b=b))
