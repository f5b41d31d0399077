"""The offline world: synthetic video-QA tasks (:mod:`.synth`), tiny Qwen-VL builders
(:mod:`.tiny`) and the recipe that trains the bundled tiny backbone (:mod:`.recipe`).

The core never imports this package. Importing it registers the tiny random backbones by name in
:mod:`resadapt.registry`; their builders import transformers only when called.
"""

from __future__ import annotations

from functools import partial

from resadapt.registry import register_backbone, register_needle_source

TINY_BACKBONES = ("tiny-random-qwen2.5-vl", "tiny-random-qwen3-vl")
"""Names of the tiny random backbones: real model classes, random weights (tests, smoke runs)."""


def _build_tiny(name: str):
    from resadapt.world.tiny import build_tiny  # transformers' model classes load on first use

    return build_tiny(name)


def _needle_clips(out_dir, num: int, seed: int, num_frames: int, size: int):
    """Main-task clips as needle clips: one question-named card at a known chunk among
    distractors, at any frame size and count (resadapt.needle)."""
    from resadapt.world.synth import write_dataset

    return write_dataset(out_dir, num, seed, "main", num_frames=num_frames, size=size)


for _name in TINY_BACKBONES:
    register_backbone(_name, partial(_build_tiny, _name))
register_needle_source("synth", _needle_clips)
