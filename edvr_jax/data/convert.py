"""A dataset's PNG build converted into the tile layout, from its records alone (no source
folders); or a build's shards verified against the sizes and SHA-256 checksums recorded when it
was written.

    python -m edvr_jax.data.convert --data_dir D --dataset reds --config sr_x4      # -> sr_x4-tiles
    python -m edvr_jax.data.convert --data_dir D --dataset footage                  # every PNG build of it
    python -m edvr_jax.data.convert --data_dir D --dataset reds --config sr_x4-tiles --verify

The tile build is written beside the PNG build (TFDS config ``<config>-tiles``, into a temporary
folder renamed when complete), which is kept; training picks it with ``data.layout=tiles`` (the
default). ``--verify`` reads every shard: about as long as copying the dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from pathlib import Path

import tensorflow_datasets as tfds

from edvr_jax.cli import exit_on_user_error, quiet_dependencies, underscore_flags
from edvr_jax.data import registry, shards
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import TILE, base_name, config_name

log = logging.getLogger("edvr_jax")


def built_configs(data_dir: str | Path, dataset: str) -> list[str]:
    """The config names of the dataset's prepared builds under ``data_dir``."""
    cls = registry.builder_class(dataset)[0]
    folder = Path(data_dir) / cls.name
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and any(
        (v / "dataset_info.json").is_file() for v in d.iterdir())) if folder.is_dir() else []


def _open(data_dir: str | Path, dataset: str, config: str) -> tfds.core.DatasetBuilder:
    cls = registry.builder_class(dataset)[0]
    folder = Path(data_dir) / cls.name / config
    versions = sorted(v for v in folder.glob("*") if (v / "dataset_info.json").is_file()) if folder.is_dir() else []
    if not versions:
        raise DatasetError(f"no build of {cls.name}/{config} in {data_dir} (built there: "
                           f"{built_configs(data_dir, dataset) or 'none'})")
    return tfds.builder_from_directory(str(versions[-1]))


def convert(data_dir: str | Path, dataset: str, config: str, tile: int = TILE,
            overwrite: bool = False) -> tfds.core.DatasetBuilder:
    """The tile build of the PNG build ``dataset/config`` in ``data_dir``, made from its records."""
    cls = registry.builder_class(dataset)[0]
    if base_name(config) != config:
        raise DatasetError(f"{cls.name}/{config} is a tile build already; name its PNG build, {base_name(config)}")
    png = _open(data_dir, dataset, config)
    if png.info.metadata.get("layout", "png") != "png":
        raise DatasetError(f"{png.data_dir} is not a PNG build (layout {png.info.metadata['layout']})")
    name = config_name(config, "tiles", tile)
    known = {c.name: c for c in cls.BUILDER_CONFIGS}
    if name in known:  # TFDS wants the class's own object for a name it lists
        target = known[name]
    elif config in known:
        target = dataclasses.replace(known[config], name=name, layout="tiles", tile=tile)
    else:  # a footage config, made per folder: only its name, scale and degradation matter here
        kind = type(cls.BUILDER_CONFIGS[0])
        target = kind(name=name, scale=int(png.info.metadata["scale"]), layout="tiles", tile=tile,
                      description=png.info.config_description)
    builder = cls(config=target, data_dir=str(data_dir), source_build=png)
    with registry.build_lock(builder):
        if builder.is_prepared():
            if not overwrite:
                log.info("%s is converted already (--overwrite converts it again)", builder.data_dir)
                return builder
            shutil.rmtree(builder.data_dir)
            builder = cls(config=target, data_dir=str(data_dir), source_build=png)
        log.info("converting %s into %s", png.data_dir, builder.data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edvr_jax.data.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="the TFDS data dir holding the build")
    parser.add_argument("--dataset", required=True, help="reds, vimeo90k, vid4, footage, demo_video, demo")
    parser.add_argument("--config", help="the PNG build's config (e.g. sr_x4); default: every PNG build of the dataset")
    parser.add_argument("--tile", type=int, default=TILE, help=f"tile side in pixels (default {TILE})")
    parser.add_argument("--overwrite", action="store_true", help="convert again over an existing tile build")
    parser.add_argument("--verify", action="store_true", help="check the build's shards against their recorded "
                        "sizes and SHA-256 instead (any layout; default: every build of the dataset)")
    parser.add_argument("--verbose", action="store_true", help="keep the dependencies' log lines")
    args = parser.parse_args(underscore_flags(argv))
    quiet_dependencies(args.verbose)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run():
        configs = [args.config] if args.config else built_configs(args.data_dir, args.dataset)
        if args.verify:
            bad = 0
            for config in configs:
                builder = _open(args.data_dir, args.dataset, config)
                problems = shards.verify(builder)
                print(f"{builder.data_dir}: " + ("all shards match" if not problems else "; ".join(problems)))
                bad += bool(problems)
            return 2 if bad else 0
        configs = [c for c in configs if base_name(c) == c]
        if not configs:
            raise DatasetError(f"no PNG build of {args.dataset} in {args.data_dir}")
        for config in configs:
            print(f"wrote {convert(args.data_dir, args.dataset, config, args.tile, args.overwrite).data_dir}")

    return exit_on_user_error(run)


if __name__ == "__main__":
    sys.exit(main())
