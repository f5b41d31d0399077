"""A training run's inputs: the seeded data order, each process's prompts, and the allocator it
starts from.

Owns the per-epoch permutation, the slot sharding across processes, decoding a step's prompts, and
building, warm-starting or resuming the allocator fitted to its backbone. Knows nothing about the
update, checkpoints or logging (:mod:`resadapt.trainer`) nor about the flags
(:mod:`resadapt.train_config`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allocator import Allocator, AllocatorConfig
from resadapt import compat
from resadapt.config import Request
from resadapt.data import Example
from resadapt.errors import ResAdaptError, VideoError
from resadapt.policies import check_fit
from resadapt.rollout import (
    DecodeCache,
    Prompt,
)
from resadapt.train_config import ALLOCATOR_KNOBS

if TYPE_CHECKING:
    from resadapt.train_config import TrainConfig

logger = logging.getLogger("resadapt.train")


# ---------------------------------------------------------------------------------------- data
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """(num_examples,) example indices in the order epoch ``epoch`` visits them."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def step_positions(step: int, prompts_per_step: int, rank: int, world_size: int) -> list[int]:
    """Stream positions of this process's prompts in 0-based ``step``: slot % world == rank."""
    first = step * prompts_per_step
    return [first + j for j in range(prompts_per_step) if j % world_size == rank]


def _request(config: TrainConfig, example: Example) -> Request:
    return Request(
        question=example.prompt(),
        num_frames=config.num_frames,
        fps=config.fps,
        budget=config.budget,
        encode_budget=config.encode_budget,
        select_sizes=config.select_sizes,
        max_new_tokens=config.max_new_tokens,
    )


def decode_prompts(
    pairs: list[tuple[int, Example]], cache: DecodeCache, config: TrainConfig
) -> tuple[list[Prompt], int]:
    """Decoded prompts for (position, example) pairs, and how many were skipped (unreadable)."""
    prompts, skipped = [], 0
    for position, example in pairs:
        request = _request(config, example)
        try:
            video = cache.get(example.video, request)
        except VideoError:
            skipped += 1
            continue
        prompts.append(Prompt(example=example, request=request, video=video, position=position))
    return prompts, skipped


# ------------------------------------------------------------------------------------ allocator
PROBE_HEAD = {
    "hidden_dim": 64,
    "num_layers": 1,
    "num_heads": 4,
    "thumb_side": 16,
    "query_match": False,
}
"""The probe head's defaults: a small head (the probe VLM does the reading), thumbnails it never
reads kept tiny, and no query detector (the probe's attention takes its place). The budget is
filled unless ``--fills-budget false`` (a ceiling-only run collapsed to the smallest scales:
docs/results.md)."""


def probe_defaults(values: dict, probe_model) -> None:
    """Fill a probe head's architecture from the probe VLM: its heads, hidden width and depth (the
    deepest layer read: every layer unless given), then :data:`PROBE_HEAD` where not given."""
    text = probe_model.model.config.text_config
    values.setdefault("probe_heads", int(text.num_attention_heads))
    values.setdefault("probe_hidden_size", int(text.hidden_size))
    if values.get("probe_layers") is None:
        values["probe_layers"] = int(text.num_hidden_layers)
    if values.get("probe_budget") is None:
        values.pop("probe_budget", None)
    for key, value in PROBE_HEAD.items():
        if values.get(key) is None:
            values[key] = value


def resolve_allocator_config(config: TrainConfig, backbone, probe_model=None) -> AllocatorConfig:
    """The architecture: allocator_config JSON, then the knobs, fitted to the backbone (and, for
    a probe head, to the probe VLM: ``probe_model``, else the backbone)."""
    values: dict = {}
    given_json: set[str] = set()
    if config.allocator_config:
        path = Path(config.allocator_config)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ResAdaptError(f"--allocator-config {path} cannot be read as JSON: {e}") from e
        if not isinstance(values, dict):
            raise ResAdaptError(f"--allocator-config {path} must hold a JSON object")
        given_json = set(values)
    values.update(
        {k: getattr(config, k) for k in ALLOCATOR_KNOBS if getattr(config, k) is not None}
    )
    if values.get("thumb_encoder") == "probe":
        for key in PROBE_HEAD:  # the knobs left unset take the probe head's defaults
            if key in ALLOCATOR_KNOBS and getattr(config, key) is None and key not in given_json:
                values.pop(key, None)
    values.setdefault("frames_per_chunk", backbone.geometry.frames_per_chunk)
    if values.get("thumb_encoder") == "probe":
        probe_defaults(values, probe_model if probe_model is not None else backbone)
        if config.probe_backbone is not None:
            values["probe_backbone"] = config.probe_backbone
    if values.get("query_encoder") == "backbone":
        values["query_embed_dim"] = int(backbone.model.get_input_embeddings().weight.shape[1])
    try:
        resolved = AllocatorConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ResAdaptError(f"invalid allocator architecture: {e}") from e
    check_fit(resolved, backbone.geometry.frames_per_chunk, "the allocator config")
    return resolved


def load_allocator(path: str | Path, backbone) -> Allocator:
    """An allocator folder (checkpoint, final or warm start), wired to the backbone if needed."""
    try:
        allocator = Allocator.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise ResAdaptError(f"cannot load an allocator from {path}: {e}") from e
    check_fit(allocator.config, backbone.geometry.frames_per_chunk, f"allocator {path}")
    return allocator


def build_allocator(
    config: TrainConfig, backbone, resume: Path | None, probe_model=None
) -> Allocator:
    """The allocator to train: from the resumed checkpoint, the warm start, or a fresh init."""
    if resume is not None:
        allocator = load_allocator(resume, backbone)
    elif config.init_allocator is not None:
        allocator = load_allocator(config.init_allocator, backbone)
    else:
        allocator = Allocator(resolve_allocator_config(config, backbone, probe_model))
    if allocator.config.query_encoder == "backbone":
        allocator.set_query_embeddings(backbone.model.get_input_embeddings().weight)
    allocator.config = compat.stamp(allocator.config, backbone, probe_model)  # trained against
    return allocator.train()
