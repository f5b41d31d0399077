"""``python -m resadapt.train``: train the allocator with CAPO against a frozen Qwen-VL backbone.

Owns the training loop: the config and its command line, data order and sharding, the clipped
update, checkpoints and resume, validation, metrics and trackers. Rollouts and rewards live in
:mod:`resadapt.rollout`, the objective's arithmetic in :mod:`resadapt.capo`; the backbone is never
trained.

Contract (CAPO.md). A step takes ``prompts_per_step`` rows in a seeded per-epoch order. Per prompt:
decode once; one allocator forward gives a Beta(α_k, β_k) per chunk k; M = ``num_rollouts``
actions a_k are drawn per chunk, s_k = s_min + a_k (s_max − s_min); the frozen backbone answers
all M allocations in one batch; each is graded (multiple-choice letter, exact, numeric, temporal
IoU) or scored by the probability of the gold answer; its cost is the fraction of the
full-resolution visual tokens it spent; CAPO advantages are computed per group of M. Update:
re-score the stored actions under the current policy, PPO clip (ε 0.2 / 0.28, dual clip 10, mean
over valid chunks) + ``sim_weight`` · L_sim + ``con_weight`` · L_con + ``attention_weight`` ·
KL(backbone attention shares ‖ query-detector shares) (:mod:`resadapt.relevance`); AdamW, linear
warm-up, gradient clipping; no KL to a reference policy, no entropy bonus. Inference and
validation use the Beta mean.

Where we differ from the paper and its reference code:
  * one Beta per chunk, sampled per chunk, so the log-density is that of the realised action (the
    reference samples per frame and averages the two frames of a chunk);
  * cost = token fraction by default (``--cost scale`` is the reference's normalised mean scale);
  * s_max = 1.0 (frames are decoded at the backbone's pixel cap); optional budget fitting of the
    sampled allocations in training (``--budget``), the way inference fits them;
  * lr 1e-4 by default, for our small from-scratch allocator (the reference's 1e-5 … 5e-5 is for
    its larger network); weight decay only on matrices (not on biases and norm gains);
  * ``ppo_epochs`` = 1 by default: rollouts and update see the same weights (and no dropout at
    the default 0), so the ratio is exactly 1, the clip is inactive and the gradient is the plain
    policy gradient −A·∇log π. With more epochs each one re-scores the stored actions under the
    updated policy and the clip applies;
  * ``--reward logprob`` (dense): exp of the mean log-probability of the gold answer's tokens (the
    end-of-turn token included), i.e. the per-token geometric-mean probability in (0, 1]. It is on
    the scale of a grade, so CAPO's "correct" threshold 0.35 keeps a meaning, and it needs no
    per-dataset offset (a sigmoid of the log-probability would). For multiple choice it scores the
    gold letter;
  * the attention distillation is ours: the backbone's full-resolution attention from the answer
    position, per chunk, is a dense per-chunk target that needs no labels (computed once per
    video; the backbone is frozen). With the bandit reward alone the allocator learned where the
    cards of our synthetic tasks are but not which one the question names (README).

Determinism and resume. The data order is a permutation per epoch drawn from (seed, epoch). The
draws of the prompt at stream position p (step × prompts_per_step + slot) come from a
``torch.Generator`` seeded by (seed, p), so they depend neither on the number of processes nor on
a resume; that is the sampling generator's whole state. Checkpoints hold the weights, optimiser,
scheduler, step and the python / numpy / torch RNG states (of the main process; nothing in the
default setup draws from the per-process RNGs). Resuming from step s and running to N gives
bitwise the weights of an uninterrupted run to N (CPU, same config and process count).

Many GPUs or nodes: ``accelerate launch`` starts one process per device (DDP). The prompts of a
step are split by slot (slot % world_size == rank); every process runs its own frozen backbone.
Each loss term is scaled by this process's share of the global count of what it averages over
(chunks, adjacent chunk pairs, videos: one all-reduce of three counts), so DDP's gradient average
is the gradient of the step's global means. Only the main process prints, writes metrics and
checkpoints; ``--resume`` needs out_dir on a file system every node sees.

Commands (one machine; after a crash; 8 GPUs; 2 nodes × 8 GPUs; 2 CPU processes):
    python -m resadapt.train --data train.jsonl --backbone PATH --out-dir runs/x
    python -m resadapt.train --data train.jsonl --backbone PATH --out-dir runs/x --resume auto
    accelerate launch --num_processes 8 -m resadapt.train --data train.jsonl --backbone PATH \\
        --out-dir runs/x
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST \\
        --num_processes 16 -m resadapt.train ...
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m resadapt.train ... --cpu
(``accelerate launch --cpu`` starts several CPU processes only through MPI; torchrun needs none.)
``--config FILE`` (YAML if PyYAML is installed, or JSON such as a run's train_config.json) gives
defaults that flags override.

Output in out_dir: ``checkpoint-{step}/`` every ``checkpoint_every`` steps and ``final/``, each
written to ``.tmp-<name>`` and renamed: ``config.json`` + ``model.safetensors`` (an allocator
folder for ``Learned.load`` / ``Allocator.from_pretrained``), ``training_state.pt`` (optimiser,
scheduler, step, RNG) and ``train_config.json`` (this run's resolved config); ``metrics.jsonl``,
one JSON object per step (``"split": "train"``) and per validation (``"split": "val"``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import types
import typing
import warnings
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import is_tensorboard_available, is_wandb_available, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from allocator import Allocator, AllocatorConfig, log_prob, mean_scale
from allocator.config import QUERY_ENCODERS
from resadapt.assets import default_backbone, is_random_backbone
from resadapt.backbone import Backbone
from resadapt.capo import (
    ADVANTAGE_MODES,
    CONCENTRATION_WEIGHT,
    SIMILARITY_WEIGHT,
    concentration_loss,
    ppo_clip_loss,
    similarity_loss,
)
from resadapt.data import DataError, Example, read_examples
from resadapt.errors import QuestionError, ResAdaptError, VideoError, validate_question
from resadapt.pipeline import THUMB_SIDE, Pipeline, Request
from resadapt.relevance import chunk_attention, distillation_loss, pad_targets
from resadapt.rollout import (
    COSTS,
    REWARDS,
    ROLLOUT_STATS,
    VALIDATION_STATS,
    DecodeCache,
    Prompt,
    RolloutBatch,
    collect_rollouts,
    mean_or_nan,
    validate,
)

logger = logging.getLogger("resadapt.train")

TRAINING_STATE = "training_state.pt"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
FINAL = "final"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRACKERS = ("none", "tensorboard", "wandb", "all")
DTYPES = ("float32", "bfloat16", "float16", "auto")
ALLOCATOR_KNOBS = ("hidden_dim", "num_layers", "num_heads", "query_encoder", "dropout")
"""TrainConfig fields that override the allocator's architecture (None: keep the default)."""
RESUME_NEUTRAL = frozenset(
    {"steps", "resume", "out_dir", "log_with", "val_data", "val_size", "val_every"}
    | {"checkpoint_every", "keep_checkpoints", "decode_cache_mb"}
)
"""Fields a resumed run may change without leaving the trajectory of the interrupted one."""
MAX_NEW_TOKENS = 1024
"""Longest answer the backbone may generate during training."""


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as train_config.json with every checkpoint."""

    # --- data ---------------------------------------------------------------------------------
    data: str = field(default="", metadata=_help("training rows, .jsonl or .parquet (required)"))
    val_data: str | None = field(
        default=None, metadata=_help("validation rows, .jsonl or .parquet; none: no validation")
    )
    val_size: int = field(default=64, metadata=_help("validate on the first N valid val rows"))
    val_every: int = field(
        default=50, metadata=_help("validate every N steps and after the last; 0: after the last")
    )
    num_frames: int | None = field(
        default=None, metadata=_help("frames sampled per video (whole chunks); overrides --fps")
    )
    fps: float = field(
        default=2.0, metadata=_help("frames sampled per second (4 to 64 frames per video)")
    )
    budget: float | None = field(
        default=None,
        metadata=_help(
            "retention ceiling in (0, 1] that every sampled allocation (and validation) is fitted "
            "to, as at inference with --budget; none: allocations are used as sampled"
        ),
    )
    decode_cache_mb: int = field(
        default=2048, metadata=_help("decoded frames kept in memory (LRU by path), in MiB")
    )
    # --- backbone -----------------------------------------------------------------------------
    backbone: str = field(
        default_factory=default_backbone,
        metadata=_help(
            "frozen backbone: a Qwen2.5-VL / Qwen3-VL checkpoint folder or hub id, or "
            "tiny-random-qwen2.5-vl / tiny-random-qwen3-vl; by default the bundled one"
        ),
    )
    dtype: str = field(
        default="float32", metadata=_help(f"backbone dtype: {', '.join(DTYPES)} (GPUs: bfloat16)")
    )
    max_pixels: int | None = field(
        default=None, metadata=_help("per-frame pixel cap, the full-resolution (scale 1) size")
    )
    # --- allocator ----------------------------------------------------------------------------
    allocator_config: str | None = field(
        default=None,
        metadata=_help(
            "allocator architecture as JSON (AllocatorConfig fields, e.g. a config.json)"
        ),
    )
    init_allocator: str | None = field(
        default=None, metadata=_help("allocator folder to warm-start from (fixes the architecture)")
    )
    hidden_dim: int | None = field(
        default=None, metadata=_help("allocator width D (default: allocator_config, else 256)")
    )
    num_layers: int | None = field(
        default=None, metadata=_help("allocator mixer blocks (default: allocator_config, else 2)")
    )
    num_heads: int | None = field(
        default=None,
        metadata=_help("allocator attention heads (default: allocator_config, else 4)"),
    )
    query_encoder: str | None = field(
        default=None,
        metadata=_help(
            "question encoder: learned or backbone (the frozen backbone's input embeddings)"
        ),
    )
    dropout: float | None = field(
        default=None, metadata=_help("allocator dropout (default: allocator_config, else 0)")
    )
    # --- rollouts and reward ------------------------------------------------------------------
    steps: int = field(default=500, metadata=_help("training steps (one update each)"))
    prompts_per_step: int = field(default=8, metadata=_help("prompts per step, all processes"))
    num_rollouts: int = field(default=8, metadata=_help("sampled allocations M per prompt"))
    answers_per_rollout: int = field(
        default=1,
        metadata=_help("answers N per allocation: 1 greedy, more sampled (--reward grade)"),
    )
    temperature: float = field(
        default=1.0, metadata=_help("sampling temperature of the answers when N > 1")
    )
    max_new_tokens: int = field(default=8, metadata=_help("longest answer generated, in tokens"))
    reward: str = field(
        default="grade",
        metadata=_help("grade: graded answers; logprob: exp(mean log-prob of the gold answer)"),
    )
    cost: str = field(
        default="tokens",
        metadata=_help("tokens: fraction of full-res visual tokens; scale: normalised mean scale"),
    )
    advantage: str = field(
        default="capo", metadata=_help("capo, or the ablations direct (z(acc) − λc) and none")
    )
    # --- optimisation -------------------------------------------------------------------------
    lr: float = field(
        default=1e-4,
        metadata=_help(
            "AdamW peak learning rate (for our small allocator; the reference's 1e-5 to 5e-5 is "
            "for its larger network)"
        ),
    )
    weight_decay: float = field(
        default=0.1, metadata=_help("AdamW weight decay (matrices only, not biases or norms)")
    )
    grad_clip: float = field(default=1.0, metadata=_help("gradient norm clip"))
    warmup_steps: int = field(default=30, metadata=_help("linear warm-up steps, then constant"))
    ppo_epochs: int = field(
        default=1, metadata=_help("updates per batch of rollouts (1: ratio 1, clip inactive)")
    )
    sim_weight: float = field(
        default=SIMILARITY_WEIGHT, metadata=_help("weight of the temporal-similarity loss")
    )
    con_weight: float = field(
        default=CONCENTRATION_WEIGHT, metadata=_help("weight of the concentration loss")
    )
    attention_weight: float = field(
        default=1.0,
        metadata=_help(
            "weight of the attention distillation: the query detector's chunk shares are pulled "
            "toward the frozen backbone's attention shares at full resolution (0: off; needs an "
            "allocator with query_match)"
        ),
    )
    attention_temperature: float = field(
        default=0.25,
        metadata=_help("sharpen the attention shares to share^(1/T) before distilling (T > 0)"),
    )
    # --- run ----------------------------------------------------------------------------------
    out_dir: str = field(default="runs/allocator", metadata=_help("checkpoints and metrics"))
    seed: int = field(default=0, metadata=_help("seed of the init, the data order and the draws"))
    checkpoint_every: int = field(
        default=100, metadata=_help("write checkpoint-{step} every N steps; 0: final only")
    )
    keep_checkpoints: int = field(
        default=0, metadata=_help("keep the newest N checkpoint-* folders; 0: keep all")
    )
    log_with: str = field(
        default="none", metadata=_help(f"trackers, if installed: {', '.join(TRACKERS)}")
    )
    cpu: bool = field(
        default=False,
        metadata=_help("run on the CPU even with a GPU present (multi-process CPU runs need it)"),
    )
    resume: str | None = field(
        default=None, metadata=_help("auto (latest checkpoint in out_dir) or a checkpoint folder")
    )

    def __post_init__(self) -> None:
        if not self.data:
            raise ResAdaptError("--data is required: a .jsonl or .parquet file of training rows")
        if self.budget is not None:
            _check(self, "budget", 0 < self.budget <= 1, "must be in (0, 1]")
        positive = ("val_size", "steps", "prompts_per_step", "answers_per_rollout", "ppo_epochs")
        for name in positive:
            _check(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("val_every", "decode_cache_mb", "warmup_steps", "checkpoint_every"):
            _check(self, name, getattr(self, name) >= 0, "must be at least 0")
        _check(self, "keep_checkpoints", self.keep_checkpoints >= 0, "must be at least 0")
        _check(
            self,
            "num_rollouts",
            self.num_rollouts >= 2,
            "must be at least 2 (CAPO compares the allocations of one prompt)",
        )
        if self.num_frames is not None:
            _check(self, "num_frames", self.num_frames >= 2, "must be at least 2 (one chunk)")
        _check(self, "fps", self.fps > 0, "must be positive")
        _check(
            self,
            "max_new_tokens",
            1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            "must be in [1, 1024]",
        )
        _check(self, "temperature", self.temperature > 0, "must be positive")
        _check(self, "lr", self.lr > 0, "must be positive")
        for name in ("weight_decay", "sim_weight", "con_weight", "attention_weight"):
            _check(self, name, getattr(self, name) >= 0, "must be at least 0")
        _check(self, "grad_clip", self.grad_clip > 0, "must be positive")
        _check(self, "attention_temperature", self.attention_temperature > 0, "must be positive")
        if self.max_pixels is not None:
            _check(self, "max_pixels", self.max_pixels > 0, "must be positive")
        for name, allowed in (
            ("reward", REWARDS),
            ("cost", COSTS),
            ("advantage", ADVANTAGE_MODES),
            ("log_with", TRACKERS),
            ("dtype", DTYPES),
        ):
            _check(
                self, name, getattr(self, name) in allowed, f"must be one of {', '.join(allowed)}"
            )
        if self.query_encoder is not None:
            _check(
                self,
                "query_encoder",
                self.query_encoder in QUERY_ENCODERS,
                f"must be one of {', '.join(QUERY_ENCODERS)}",
            )
        if self.answers_per_rollout > 1 and self.reward != "grade":
            raise ResAdaptError(
                "--answers-per-rollout > 1 needs --reward grade (the log-probability of the gold "
                "answer is deterministic); set it to 1"
            )
        if self.init_allocator is not None:
            given = [k for k in ALLOCATOR_KNOBS if getattr(self, k) is not None]
            if self.allocator_config is not None:
                given.append("allocator_config")
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ResAdaptError(
                    f"--init-allocator fixes the architecture; drop {flags} or the warm start"
                )


def _check(config: TrainConfig, name: str, ok: bool, rule: str) -> None:
    """Raise the one-sentence error of a field outside its range, naming the flag and value."""
    if not ok:
        value = getattr(config, name)
        raise ResAdaptError(f"--{name.replace('_', '-')} {rule}, got {value!r}")


# ------------------------------------------------------------------------------------ command line
def _field_type(annotation) -> tuple[type, bool]:
    """(base type, optional) of an annotation such as ``int | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


@dataclass(frozen=True)
class _FieldType:
    """argparse ``type`` of one field: a flag's text or a config-file value → the field's type."""

    base: type
    optional: bool
    name: str

    def __call__(self, value):
        if self.optional and (value is None or str(value).lower() in ("none", "")):
            return None
        if self.base is bool and not isinstance(value, bool):
            text = str(value).lower()
            if text not in ("true", "false"):
                raise argparse.ArgumentTypeError(
                    f"{self.name} must be true or false, got {value!r}"
                )
            return text == "true"
        if self.base is int and isinstance(value, float) and not value.is_integer():
            raise argparse.ArgumentTypeError(f"{self.name} must be an integer, got {value!r}")
        try:
            return self.base(value)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(
                f"invalid {self.base.__name__} value for {self.name}: {value!r}"
            ) from e


def read_config_file(path: str) -> dict:
    """Field values from a YAML (needs PyYAML) or JSON file; unknown keys are an error."""
    file = Path(path)
    if not file.is_file():
        raise ResAdaptError(f"--config {path} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ResAdaptError(
                f"--config {path} is YAML but PyYAML is not installed; pip install pyyaml or "
                "use a JSON file"
            ) from e
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ResAdaptError(f"--config {path} is not valid YAML: {e}") from e
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResAdaptError(f"--config {path} is not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ResAdaptError(f"--config {path} must hold a mapping of field names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ResAdaptError(f"--config {path} has unknown fields: {', '.join(unknown)}")
    hints = typing.get_type_hints(TrainConfig)
    converted = {}
    for name, value in values.items():
        base, optional = _field_type(hints[name])
        try:
            converted[name] = _FieldType(base, optional, name)(value)
        except argparse.ArgumentTypeError as e:
            raise ResAdaptError(f"--config {path}: {e}") from e
    return converted


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (``--num-rollouts`` for ``num_rollouts``), help from it."""
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        prog="python -m resadapt.train",
        description="Train the resolution allocator with CAPO against a frozen Qwen-VL backbone.",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML or JSON file of field values used as defaults (e.g. a run's train_config.json)",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        base, optional = _field_type(hints[f.name])
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = f.default
        kind = (
            {"action": argparse.BooleanOptionalAction}
            if base is bool
            else {"type": _FieldType(base, optional, f.name)}
        )
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            **kind,
            default=default,
            help=f"{f.metadata['help']} (default: {default})"
            if default != ""
            else f.metadata["help"],
        )
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; raises ResAdaptError (argparse exits 2 by itself)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    defaults = read_config_file(known.config) if known.config else {}
    values = vars(build_parser(defaults).parse_args(argv))
    values.pop("config")
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------- data
def load_examples(path: str, limit: int | None = None) -> tuple[list[Example], Counter]:
    """Valid rows of a data file (first ``limit``), with the skipped rows counted by reason."""
    examples, skipped = read_examples(path)
    kept = []
    for example in examples:
        try:
            validate_question(example.prompt())
        except QuestionError:
            skipped["question too long"] += 1
            continue
        kept.append(example)
    if not kept:
        raise DataError(f"{path} has no usable rows (skipped: {dict(skipped)})")
    if skipped["question too long"]:
        logger.warning(
            "%s: skipped %d rows whose prompt is too long", path, skipped["question too long"]
        )
    return kept[:limit], skipped


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
def resolve_allocator_config(config: TrainConfig, backbone) -> AllocatorConfig:
    """The architecture: allocator_config JSON, then the knobs, fitted to the backbone."""
    values: dict = {}
    if config.allocator_config:
        path = Path(config.allocator_config)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ResAdaptError(f"--allocator-config {path} cannot be read as JSON: {e}") from e
        if not isinstance(values, dict):
            raise ResAdaptError(f"--allocator-config {path} must hold a JSON object")
    values.update(
        {k: getattr(config, k) for k in ALLOCATOR_KNOBS if getattr(config, k) is not None}
    )
    values.setdefault("thumb_side", THUMB_SIDE)
    values.setdefault("frames_per_chunk", backbone.geometry.frames_per_chunk)
    if values.get("query_encoder") == "backbone":
        values["query_embed_dim"] = int(backbone.model.get_input_embeddings().weight.shape[1])
    try:
        resolved = AllocatorConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ResAdaptError(f"invalid allocator architecture: {e}") from e
    _check_fit(resolved, backbone, "the allocator config")
    return resolved


def _check_fit(cfg: AllocatorConfig, backbone, what: str) -> None:
    frames = backbone.geometry.frames_per_chunk
    if cfg.thumb_side != THUMB_SIDE or cfg.frames_per_chunk != frames:
        raise ResAdaptError(
            f"{what} has thumb_side={cfg.thumb_side}, frames_per_chunk={cfg.frames_per_chunk}; "
            f"the pipeline needs {THUMB_SIDE} and the backbone's {frames}"
        )


def load_allocator(path: str | Path, backbone) -> Allocator:
    """An allocator folder (checkpoint, final or warm start), wired to the backbone if needed."""
    try:
        allocator = Allocator.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise ResAdaptError(f"cannot load an allocator from {path}: {e}") from e
    _check_fit(allocator.config, backbone, f"allocator {path}")
    return allocator


def build_allocator(config: TrainConfig, backbone, resume: Path | None) -> Allocator:
    """The allocator to train: from the resumed checkpoint, the warm start, or a fresh init."""
    if resume is not None:
        allocator = load_allocator(resume, backbone)
    elif config.init_allocator is not None:
        allocator = load_allocator(config.init_allocator, backbone)
    else:
        allocator = Allocator(resolve_allocator_config(config, backbone))
    if allocator.config.query_encoder == "backbone":
        allocator.set_query_embeddings(backbone.model.get_input_embeddings().weight)
    return allocator.train()


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases, norms and other 1-D parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of update ``step`` (0-based): linear up to 1 over warmup_steps."""
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def idle_inputs(cfg: AllocatorConfig, device) -> dict[str, torch.Tensor]:
    """A one-chunk dummy batch for a process without prompts: DDP needs every process's backward."""
    f, s = cfg.frames_per_chunk, cfg.thumb_side
    return {
        "thumbs": torch.zeros(1, 1, f, 3, s, s, device=device),  # (B, K, F, 3, S, S)
        "query_ids": torch.zeros(1, 1, dtype=torch.long, device=device),  # (B, L)
        "query_mask": torch.ones(1, 1, dtype=torch.bool, device=device),  # (B, L)
        "chunk_mask": torch.ones(1, 1, dtype=torch.bool, device=device),  # (B, K)
        "chunk_times": torch.zeros(1, 1, device=device),  # (B, K)
    }


# -------------------------------------------------------------------------------------- objective
def capo_loss(
    out,
    batch: RolloutBatch,
    cfg: AllocatorConfig,
    config: TrainConfig,
    chunk_share: float,
    pair_share: float,
    video_share: float = 1.0,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """PPO-clip on the stored actions + the regularisers, each scaled by this process's share.

    ``chunk_share`` = local / global valid chunks × world size (1 in one process), likewise
    ``pair_share`` for adjacent chunk pairs and ``video_share`` for videos; DDP's average of the
    gradients is then the gradient of the global means. ``targets`` (B, K): the backbone's
    attention shares the query detector is distilled toward (``--attention-weight``).
    """
    b, m, k = batch.actions.shape
    alpha = out.alpha[:, None].expand(b, m, k)  # (B, M, K)
    beta = out.beta[:, None].expand(b, m, k)  # (B, M, K)
    new = log_prob(alpha, beta, batch.actions).reshape(b * m, k)  # (B·M, K)
    mask = batch.chunk_mask[:, None].expand(b, m, k).reshape(b * m, k)  # (B·M, K)
    pg = ppo_clip_loss(new, batch.log_prob.reshape(b * m, k), batch.advantages.reshape(b * m), mask)
    scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
    sim = similarity_loss(out.features, scales, batch.chunk_mask)  # features (B, K, D)
    con = concentration_loss(out.alpha, out.beta, batch.chunk_mask)
    parts = {
        "pg_loss": chunk_share * pg,
        "sim_loss": pair_share * sim,
        "con_loss": chunk_share * con,
        "attention_loss": pg.new_zeros(()),
    }
    if targets is not None:
        distil = distillation_loss(out.match_log_share, targets, batch.chunk_mask)
        parts["attention_loss"] = video_share * distil
    parts["loss"] = (
        parts["pg_loss"]
        + config.sim_weight * parts["sim_loss"]
        + config.con_weight * parts["con_loss"]
        + config.attention_weight * parts["attention_loss"]
    )
    return parts


# ------------------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, as plain types and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path, allocator: Allocator, training_state: dict, config: TrainConfig
) -> None:
    """Write ``folder`` atomically: build ``.tmp-<name>`` beside it, then rename."""
    tmp = folder.parent / f".tmp-{folder.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    allocator.save_pretrained(tmp)
    torch.save(training_state, tmp / TRAINING_STATE)
    (tmp / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    if folder.exists():  # e.g. final/ of a run that is being extended
        old = folder.parent / f".old-{folder.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)


def checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-{step}`` folders in out_dir, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = CHECKPOINT.match(path.name)
        if match and (path / TRAINING_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _state_step(folder: Path) -> int:
    return int(torch.load(folder / TRAINING_STATE, map_location="cpu", weights_only=True)["step"])


def find_resume(config: TrainConfig) -> Path | None:
    """The checkpoint folder to resume from, or None; refuses to overwrite a run unasked."""
    out_dir = Path(config.out_dir)
    if config.resume is None:
        clash = [p.name for p in (out_dir / FINAL, out_dir / METRICS_FILE) if p.exists()]
        clash += [p.name for _, p in checkpoints(out_dir)]
        if clash:
            raise ResAdaptError(
                f"{out_dir} already holds a run ({', '.join(sorted(clash)[:3])}); pass --resume "
                "auto to continue it or choose another --out-dir"
            )
        return None
    if config.resume == "auto":
        found = checkpoints(out_dir)
        final = out_dir / FINAL
        if (final / TRAINING_STATE).is_file():
            found.append((_state_step(final), final))
        if not found:
            logger.info("no checkpoint in %s: starting from scratch", out_dir)
            return None
        return max(found, key=lambda item: item[0])[1]
    path = Path(config.resume)
    if not (path / TRAINING_STATE).is_file():
        raise ResAdaptError(f"--resume {path} is not a checkpoint folder (no {TRAINING_STATE})")
    return path


def _warn_config_changes(folder: Path, config: TrainConfig) -> None:
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("%s has no readable %s; cannot compare configs", folder, CONFIG_FILE)
        return
    now = asdict(config)
    changed = [k for k in now if k not in RESUME_NEUTRAL and saved.get(k) != now[k]]
    if changed:
        logger.warning(
            "resuming with changed settings (%s): the run will differ from an uninterrupted one",
            ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed),
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut off by the crash
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(record: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }


def _trackers(log_with: str) -> list[str]:
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    wanted = list(available) if log_with == "all" else [] if log_with == "none" else [log_with]
    for name in wanted:
        if not available[name]:
            logger.warning("%s is not installed; metrics go to %s only", name, METRICS_FILE)
    return [name for name in wanted if available[name]]


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run: the loaded backbone, the prepared allocator and the run's bookkeeping."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out_dir = Path(config.out_dir)
        trackers = _trackers(config.log_with)
        self.accelerator = Accelerator(
            cpu=config.cpu,
            log_with=trackers or None,
            project_dir=config.out_dir,
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        acc = self.accelerator
        self.is_main = acc.is_main_process
        self.examples, self.skipped_rows = load_examples(config.data)
        self.val_examples = (
            load_examples(config.val_data, config.val_size)[0] if config.val_data else []
        )
        resume = find_resume(config)
        self.backbone = Backbone.load(
            config.backbone,
            dtype=config.dtype,
            device=str(acc.device),
            max_pixels=config.max_pixels,
        )
        if is_random_backbone(config.backbone):
            logger.warning("%s has random weights: its rewards carry no signal", config.backbone)
        self.pipeline = Pipeline(self.backbone)
        self.cache = DecodeCache(self.pipeline, config.decode_cache_mb * 2**20)
        set_seed(config.seed)  # after the backbone: the tiny builders reseed torch
        allocator = build_allocator(config, self.backbone, resume)
        if config.attention_weight and not allocator.config.query_match:
            raise ResAdaptError(
                "--attention-weight needs the allocator's query detector (query_match); set "
                "--attention-weight 0 or use an allocator config with query_match true"
            )
        self.attention_targets: dict[tuple[str, str], torch.Tensor] = {}
        """Full-resolution attention shares per (video, question): the backbone is frozen."""
        optimizer = torch.optim.AdamW(
            parameter_groups(allocator, config.weight_decay), lr=config.lr
        )
        warmup = functools.partial(warmup_factor, warmup_steps=config.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
        # The scheduler steps once per training step (not once per process, accelerate's default).
        # DDP must not broadcast buffers every forward (the "backbone" query encoder holds the
        # backbone's embedding matrix as one); torch's replacement flag is not in accelerate yet.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*broadcast_buffers.*deprecated", FutureWarning)
            self.model, self.optimizer, self.scheduler = acc.prepare(
                allocator, optimizer, scheduler
            )
        self.start_step = 0
        self.skipped_videos = 0
        if resume is not None:
            state = torch.load(resume / TRAINING_STATE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.start_step = int(state["step"])
            self.skipped_videos = int(state.get("skipped_videos", 0))
            _warn_config_changes(resume, config)
            logger.info("resumed from %s at step %d", resume, self.start_step)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(self.out_dir / METRICS_FILE, self.start_step)
        acc.wait_for_everyone()
        tracker_config = {k: ("" if v is None else v) for k, v in asdict(config).items()}
        acc.init_trackers("resadapt-train", config=tracker_config)
        if config.prompts_per_step < acc.num_processes:
            logger.warning(
                "%d prompts per step for %d processes: some processes idle every step",
                config.prompts_per_step,
                acc.num_processes,
            )
        n_params = sum(p.numel() for p in allocator.parameters() if p.requires_grad)
        logger.info(
            "training a %.2fM-parameter allocator on %d rows (%d processes) against %s",
            n_params / 1e6,
            len(self.examples),
            acc.num_processes,
            config.backbone,
        )

    @property
    def allocator(self) -> Allocator:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ one step
    def _prompts(self, step: int) -> tuple[list[Prompt], int, int]:
        """This process's decoded prompts of ``step``, skipped prompts, and the step's epoch."""
        acc, n = self.accelerator, len(self.examples)
        positions = step_positions(
            step, self.config.prompts_per_step, acc.process_index, acc.num_processes
        )
        orders: dict[int, np.ndarray] = {}
        pairs = []
        for position in positions:
            epoch = position // n
            if epoch not in orders:
                orders[epoch] = epoch_order(n, self.config.seed, epoch)
            pairs.append((position, self.examples[int(orders[epoch][position % n])]))
        prompts, skipped = decode_prompts(pairs, self.cache, self.config)
        return prompts, skipped, step * self.config.prompts_per_step // n

    def _targets(self, prompts: list[Prompt], k_max: int) -> torch.Tensor:
        """(B, K) the backbone's full-resolution attention shares of the prompts' chunks."""
        memo = self.attention_targets
        missing = [p for p in prompts if (p.example.video, p.request.question) not in memo]
        if missing:
            videos = []
            for p in missing:  # the vanilla policy: every chunk at scale 1, never budget-fitted
                full = self.pipeline.allocate(p.video, replace(p.request, policy="vanilla"))
                videos.append(self.pipeline.chunked(p.video, full))
            shares = chunk_attention(self.backbone, videos, [p.request.question for p in missing])
            for p, share in zip(missing, shares, strict=True):
                memo[(p.example.video, p.request.question)] = share
        shares = [memo[(p.example.video, p.request.question)] for p in prompts]
        targets = pad_targets(shares, k_max, self.config.attention_temperature)
        return targets.to(self.accelerator.device)

    def _reduce(self, values: list[float], reduction: str = "sum") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction=reduction).tolist()

    def train_step(self, step: int) -> dict:
        """Rollouts, then ``ppo_epochs`` clipped updates; returns the step's metrics record."""
        config, acc = self.config, self.accelerator
        start = time.perf_counter()
        prompts, skipped, epoch = self._prompts(step)
        batch = None
        if prompts:
            batch = collect_rollouts(
                self.pipeline,
                self.allocator,
                prompts,
                num_rollouts=config.num_rollouts,
                answers_per_rollout=config.answers_per_rollout,
                reward=config.reward,
                cost=config.cost,
                advantage=config.advantage,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                seed=config.seed,
            )
        chunks = float(batch.chunk_mask.sum()) if batch is not None else 0.0
        pairs = (
            0.0
            if batch is None
            else float((batch.chunk_mask[:, 1:] & batch.chunk_mask[:, :-1]).sum())
        )
        videos = float(len(prompts)) if batch is not None else 0.0
        g_chunks, g_pairs, g_videos = self._reduce([chunks, pairs, videos])
        world = acc.num_processes
        chunk_share = chunks / g_chunks * world if g_chunks else 0.0
        pair_share = pairs / g_pairs * world if g_pairs else 0.0
        video_share = videos / g_videos * world if g_videos else 0.0
        targets = None
        if batch is not None and config.attention_weight:
            targets = self._targets(prompts, batch.chunk_mask.shape[1])  # (B, K)
        lr = self.scheduler.get_last_lr()[0]
        sums = dict.fromkeys(("loss", "pg_loss", "sim_loss", "con_loss", "attention_loss"), 0.0)
        agree = 0.0  # prompts whose detector and backbone attention pick the same chunk
        grad_norm = math.nan
        if g_chunks:
            self.model.train()
            for _ in range(config.ppo_epochs):
                self.optimizer.zero_grad(set_to_none=True)
                if batch is not None:
                    out = self.model(**batch.inputs)
                    parts = capo_loss(
                        out,
                        batch,
                        self.allocator.config,
                        config,
                        chunk_share,
                        pair_share,
                        video_share,
                        targets,
                    )
                    if targets is not None:
                        picks = out.match_log_share.detach().masked_fill(
                            ~batch.chunk_mask, -math.inf
                        )
                        same = picks.argmax(dim=1) == targets.argmax(dim=1)
                        agree = float(same.sum())
                else:
                    out = self.model(**idle_inputs(self.allocator.config, acc.device))
                    zero = 0.0 * (out.alpha.sum() + out.beta.sum() + out.features.sum())
                    if out.match_log_share is not None:
                        zero = zero + 0.0 * out.match_log_share.sum()
                    parts = dict.fromkeys(sums, zero)
                acc.backward(parts["loss"])
                grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), config.grad_clip))
                self.optimizer.step()
                for k in sums:
                    sums[k] += float(parts[k].detach()) / config.ppo_epochs
        else:
            logger.warning("step %d: no readable video in the whole step; no update", step + 1)
        self.scheduler.step()
        losses = dict(zip(sums, self._reduce(list(sums.values()), "mean"), strict=True))
        stats = batch.stats if batch is not None else dict.fromkeys(ROLLOUT_STATS, 0.0)
        totals = dict(
            zip(ROLLOUT_STATS, self._reduce([stats[k] for k in ROLLOUT_STATS]), strict=True)
        )
        skipped_step, g_agree = self._reduce([float(skipped), agree])
        self.skipped_videos += int(skipped_step)
        n = totals["rollouts"]
        adv_mean = mean_or_nan(totals["advantage"], n)
        adv_var = mean_or_nan(totals["advantage_sq"], n) - adv_mean**2
        if not g_chunks:
            losses = dict.fromkeys(losses, math.nan)
        return {
            "split": "train",
            "step": step + 1,
            "epoch": epoch,
            "reward": mean_or_nan(totals["reward"], n),
            "accuracy": mean_or_nan(totals["correct"], n),
            "retention": mean_or_nan(totals["retention"], n),
            "visual_tokens": mean_or_nan(totals["visual_tokens"], n),
            "scale_spread": mean_or_nan(totals["scale_spread"], n),
            "policy_spread": mean_or_nan(totals["policy_spread"], totals["prompts"]),
            "attention_agreement": (
                mean_or_nan(g_agree, totals["prompts"]) if config.attention_weight else math.nan
            ),
            "advantage_mean": adv_mean,
            "advantage_std": math.sqrt(max(adv_var, 0.0)) if n else math.nan,
            **losses,
            "grad_norm": grad_norm,
            "lr": lr,
            "prompts": int(totals["prompts"]),
            "rollouts": int(n),
            "skipped_videos": int(skipped_step),
            "skipped_videos_total": self.skipped_videos,
            "skipped_rows": sum(self.skipped_rows.values()),
            "world_size": world,
            "seconds": time.perf_counter() - start,
        }

    # ------------------------------------------------------------------ validation
    def validate(self, step: int) -> dict:
        """Deterministic policy on this process's share of the validation rows; global means."""
        acc, config = self.accelerator, self.config
        start = time.perf_counter()
        pairs = [
            (i, ex)
            for i, ex in enumerate(self.val_examples)
            if i % acc.num_processes == acc.process_index
        ]
        prompts, skipped = decode_prompts(pairs, self.cache, config)
        stats = dict.fromkeys(VALIDATION_STATS, 0.0)
        if prompts:
            stats = validate(
                self.pipeline,
                self.allocator,
                prompts,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.prompts_per_step,
            )
        totals = dict(
            zip(VALIDATION_STATS, self._reduce([stats[k] for k in VALIDATION_STATS]), strict=True)
        )
        (skipped_total,) = self._reduce([float(skipped)])
        n = totals["videos"]
        return {
            "split": "val",
            "step": step,
            "accuracy": mean_or_nan(totals["accuracy"], n),
            "retention": mean_or_nan(totals["retention"], n),
            "visual_tokens": mean_or_nan(totals["visual_tokens"], n),
            "scale_spread": mean_or_nan(totals["scale_spread"], n),
            "videos": int(n),
            "skipped_videos": int(skipped_total),
            "seconds": time.perf_counter() - start,
        }

    # ------------------------------------------------------------------ output
    def _record(self, record: dict) -> None:
        """Main process: one metrics.jsonl line and the trackers; every process: nothing else."""
        if self.is_main:
            with (self.out_dir / METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")
        split = record["split"]
        numbers = {
            f"{split}/{k}": v
            for k, v in record.items()
            if isinstance(v, int | float) and k != "step" and math.isfinite(v)
        }
        self.accelerator.log(numbers, step=record["step"])

    def save(self, name: str, step: int) -> None:
        """Main process writes out_dir/<name>; the others wait for it."""
        if self.is_main:
            state = {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "skipped_videos": self.skipped_videos,
                "world_size": self.accelerator.num_processes,
            }
            save_checkpoint(self.out_dir / name, self.allocator, state, self.config)
            keep = self.config.keep_checkpoints
            if keep and name != FINAL:
                for _, old in checkpoints(self.out_dir)[:-keep]:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def run(self) -> Allocator:
        """Train from the start (or resumed) step to ``steps``; returns the trained allocator."""
        config = self.config
        progress = tqdm(
            total=config.steps,
            initial=self.start_step,
            disable=not self.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        with logging_redirect_tqdm():
            for step in range(self.start_step, config.steps):
                record = self.train_step(step)
                self._record(record)
                progress.update(1)
                logger.info(
                    "step %d/%d reward %.3f acc %.3f retention %.3f tokens/video %.1f "
                    "spread %.3f adv_std %.3f loss %.4f attention %.3f (agree %.2f) %.1fs",
                    record["step"],
                    config.steps,
                    record["reward"],
                    record["accuracy"],
                    record["retention"],
                    record["visual_tokens"],
                    record["scale_spread"],
                    record["advantage_std"],
                    record["loss"],
                    record["attention_loss"],
                    record["attention_agreement"],
                    record["seconds"],
                )
                done = step + 1
                if config.checkpoint_every and done % config.checkpoint_every == 0:
                    self.save(f"checkpoint-{done}", done)
                every = config.val_every
                if self.val_examples and ((every and done % every == 0) or done == config.steps):
                    val = self.validate(done)
                    self._record(val)
                    logger.info(
                        "val step %d acc %.3f retention %.3f tokens/video %.1f spread %.3f "
                        "(%d videos) %.1fs",
                        done,
                        val["accuracy"],
                        val["retention"],
                        val["visual_tokens"],
                        val["scale_spread"],
                        val["videos"],
                        val["seconds"],
                    )
        progress.close()
        self.save(FINAL, max(self.start_step, config.steps))
        self.accelerator.end_training()
        logger.info(
            "done: %s (skipped %d invalid rows and %d prompts with an unreadable video)",
            self.out_dir / FINAL,
            sum(self.skipped_rows.values()),
            self.skipped_videos,
        )
        return self.allocator


def train(config: TrainConfig) -> Allocator:
    """Run CAPO training as configured; returns the trained allocator (every process)."""
    return Trainer(config).run()


def main(argv: list[str] | None = None) -> int:
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("resadapt.video").setLevel(logging.WARNING)  # one line per decoded video
    try:
        config = parse_config(argv)
        train(config)
    except ResAdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
