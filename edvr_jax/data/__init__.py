"""Datasets (TFDS builders over local folders, ``registry.load_builder`` by name) and the Grain
input pipeline."""

from edvr_jax.data.builder import Clip, LazyFrame, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.codec import CODECS, Codec
from edvr_jax.data.degrade import DEGRADATIONS, degrade
from edvr_jax.data.demo import EdvrDemo
from edvr_jax.data.demo_video import EdvrDemoVideo
from edvr_jax.data.folders import find_clips, folder_clips, has_lq_folder
from edvr_jax.data.footage import EdvrFootage, FootageConfig
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.layout import LAYOUTS, TileGrid
from edvr_jax.data.pipeline import (ClipReader, EvalClip, TrainBatches, WindowSpec, auto_worker_count, eval_clips,
                                    train_loader)
from edvr_jax.data.reds import EdvrReds
from edvr_jax.data.registry import DATASETS, footage_options, load_builder, load_config_builder
from edvr_jax.data.vid4 import EdvrVid4
from edvr_jax.data.vimeo90k import EdvrVimeo90k

__all__ = ["CODECS", "Clip", "Codec", "DATASETS", "DEGRADATIONS", "LAYOUTS", "ClipReader", "DatasetError", "EdvrDemo",
           "EdvrDemoVideo", "EdvrFootage", "EdvrReds", "EdvrVid4", "EdvrVimeo90k", "EvalClip", "FootageConfig",
           "LazyFrame", "TileGrid", "TrainBatches", "VideoConfig", "VideoRestorationBuilder", "WindowSpec",
           "auto_worker_count", "degrade", "eval_clips", "find_clips", "folder_clips", "footage_options",
           "has_lq_folder", "load_builder", "load_config_builder", "train_loader"]
