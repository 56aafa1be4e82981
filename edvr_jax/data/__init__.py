"""Datasets (TFDS builders over local folders) and the Grain input pipeline."""

from edvr_jax.data.builder import Clip, VideoConfig, VideoRestorationBuilder
from edvr_jax.data.demo import EdvrDemo
from edvr_jax.data.frames import DatasetError
from edvr_jax.data.pipeline import (DATASETS, ClipReader, EvalClip, WindowSpec, eval_clips, load_builder, train_loader)
from edvr_jax.data.reds import EdvrReds
from edvr_jax.data.vid4 import EdvrVid4
from edvr_jax.data.vimeo90k import EdvrVimeo90k

__all__ = ["Clip", "DATASETS", "ClipReader", "DatasetError", "EdvrDemo", "EdvrReds", "EdvrVid4", "EdvrVimeo90k",
           "EvalClip", "VideoConfig", "VideoRestorationBuilder", "WindowSpec", "eval_clips",
           "load_builder", "train_loader"]
