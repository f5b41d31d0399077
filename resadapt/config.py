"""What a user chooses: one question's :class:`Request`, and where and what the models are
(:class:`DeviceConfig` → :class:`BackboneConfig` → :class:`ModelConfig`, with the engine's fields).

Owns these typed records (every field a flag of ask, eval, the app and train through
resadapt.cli), their defaults and their one-sentence validation. Knows nothing about loading or
running a model (resadapt.pipeline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from resadapt import prune
from resadapt.backbone import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_MAX_BATCH_TOKENS,
    STREAM_TIMEOUT_S,
    check_attn_implementation,
)
from resadapt.cli import option
from resadapt.engines import EngineConfig
from resadapt.errors import BudgetError, validate_question
from resadapt.policies import (
    PROBE_BUDGET,
    SELECT_SIZES,
    Attention,
    Learned,
    describe_policies,
    policy_choices,
    policy_class,
)

MAX_NEW_TOKENS = 1024
"""Longest answer a request may ask for, in tokens."""
ENCODE_BUDGET = 0.25
"""Default share of the full-resolution tokens the vision tower may encode for a
``scorer+…+prune`` policy (never below the budget itself)."""


DTYPES = ("auto", "float32", "bfloat16", "float16", "checkpoint")
"""Backbone dtypes a user may name (auto: bfloat16 on CUDA, float32 elsewhere; checkpoint: the
checkpoint's own)."""
DEVICE_MAPS = ("auto",)
"""``--device-map`` values: accelerate's big-model placement over every visible device."""
DEVICE_ENV = "RESADAPT_DEVICE"
"""Environment variable that names the torch device when ``--device auto``."""


def _policy_help() -> str:
    """``--policy``'s help: the registered policies with their descriptions, read when a parser is
    built (a policy registered after import is listed)."""
    return (
        f"allocation policy (default: {Learned.name} when an allocator is loaded, else "
        f"{Attention.name}): {describe_policies()}; or a scorer followed by operators, "
        "SCORER+select, SCORER+prune, SCORER+select+prune (e.g. learned+prune)"
    )


@dataclass
class Request:
    """Everything a user chooses about one question (validated in ``__post_init__``).

    The single source of the ask / app / API fields and of their defaults.
    """

    question: str = option("the question to answer", positional=True)
    policy: str | None = option(_policy_help, None, choices=policy_choices)
    scale: float = option("scale of --policy uniform before budget fitting, in (0, 1]", 0.5)
    budget: float | None = option(
        "retention R in (0, 1]: the share of the full-resolution visual tokens that may be spent",
        None,
    )
    max_visual_tokens: int | None = option(
        "absolute cap on visual tokens (the tighter of the two caps wins)", None
    )
    num_frames: int | None = option(
        "sample this many frames (rounded to whole chunks); overrides --fps",
        None,
        flags=("--frames", "--num-frames"),
    )
    fps: float = option("frames sampled per second when --frames is not given", 2.0)
    max_new_tokens: int = option("longest answer, in tokens", 32)
    seed: int = option("seed of --policy random", 0)
    probe_budget: float = option(
        "--policy attention: visual tokens of its probe pass (every chunk at one low size), as a "
        "share in (0, 1] of the full-resolution tokens; reported as probe_visual_tokens",
        PROBE_BUDGET,
    )
    probe_layers: int | None = option(
        "--policy attention: run the probe through only the first N language-model layers "
        "(FlexSelect-style truncation); none: all layers",
        None,
    )
    contextual_share: float = option(
        "--policy prune: share in [0, 1) of the kept visual tokens that are contextual tokens "
        "(the remaining tokens merged into evenly spaced targets)",
        prune.CONTEXTUAL_SHARE,
    )
    encode_budget: float | None = option(
        "SCORER+prune and SCORER+select+prune: share in (0, 1] of the full-resolution visual "
        "tokens the scorer and operator spend in the vision tower before pruning keeps --budget "
        f"of them (never below the budget; default {ENCODE_BUDGET:g})",
        None,
    )
    select_sizes: str = option(
        "SCORER+select: keep the top chunks at full resolution while the budget holds them "
        "(full), or the chunks scored at least half the top score at their own scales fitted to "
        "the budget (own)",
        SELECT_SIZES[0],
        choices=SELECT_SIZES,
    )

    def __post_init__(self) -> None:
        self.question = validate_question(self.question)
        validate_probe(self.probe_budget, self.probe_layers)
        validate_contextual(self.contextual_share)
        validate_encode(self.encode_budget, self.select_sizes)
        if self.policy is not None:
            policy_class(self.policy)  # PolicyError naming the choices for an unknown name
        if self.budget is not None and not 0 < self.budget <= 1:
            raise BudgetError(f"the budget (retention) must be in (0, 1], got {self.budget}")
        if self.max_visual_tokens is not None and self.max_visual_tokens <= 0:
            raise BudgetError(f"max visual tokens must be positive, got {self.max_visual_tokens}")
        if self.num_frames is not None and self.num_frames <= 0:
            raise BudgetError(f"the frame count must be positive, got {self.num_frames}")
        if not self.fps > 0:
            raise BudgetError(f"fps must be positive, got {self.fps}")
        if not 0 < self.max_new_tokens <= MAX_NEW_TOKENS:
            raise BudgetError(
                f"max new tokens must be in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens}"
            )


def validate_probe(probe_budget: float, probe_layers: int | None) -> None:
    """Raise BudgetError for a probe budget outside (0, 1] or a layer count below 1."""
    if not 0 < probe_budget <= 1:
        raise BudgetError(f"the probe budget must be in (0, 1], got {probe_budget}")
    if probe_layers is not None and probe_layers < 1:
        raise BudgetError(f"probe layers must be at least 1 (or none for all), got {probe_layers}")


def validate_encode(encode_budget: float | None, select_sizes: str) -> None:
    """Raise BudgetError for an encode budget outside (0, 1] or an unknown select variant."""
    if encode_budget is not None and not 0 < encode_budget <= 1:
        raise BudgetError(f"the encode budget must be in (0, 1], got {encode_budget}")
    if select_sizes not in SELECT_SIZES:
        raise BudgetError(
            f"select sizes must be one of {', '.join(SELECT_SIZES)}, got {select_sizes!r}"
        )


def validate_contextual(share: float) -> None:
    """Raise BudgetError for a contextual share outside [0, 1)."""
    if not 0 <= share < 1:
        raise BudgetError(f"the contextual share must be in [0, 1), got {share}")


@dataclass
class DeviceConfig:
    """Where and how the backbone runs; ask, eval, the app and train share these fields."""

    device: str = option(
        f"torch device, e.g. cpu or cuda; auto: ${DEVICE_ENV}, else cuda when available, else cpu",
        "auto",
    )
    dtype: str = option(
        "backbone dtype: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16 "
        "or checkpoint (the checkpoint's own)",
        "auto",
        choices=DTYPES,
    )
    attn_implementation: str = option(
        "attention kernel of the backbone: sdpa, flash_attention_2 (needs flash-attn) or eager",
        "sdpa",
        choices=ATTN_IMPLEMENTATIONS,
    )
    device_map: str | None = option(
        "auto: spread a checkpoint over every visible GPU with accelerate (not moved with --device "
        "then); none: the whole model on --device",
        None,
        choices=DEVICE_MAPS,
    )
    max_batch_tokens: int | None = option(
        "micro-batch budget in prompt tokens (rows × longest row): bounds the backbone's memory "
        "whatever the batch size or frame count (default: "
        + ", ".join(f"{n} on {d}" for d, n in DEFAULT_MAX_BATCH_TOKENS.items())
        + ")",
        None,
    )

    def __post_init__(self) -> None:
        if self.max_batch_tokens is not None and self.max_batch_tokens <= 0:
            raise BudgetError(f"--max-batch-tokens must be positive, got {self.max_batch_tokens}")
        check_attn_implementation(self.attn_implementation)

    @property
    def torch_device(self) -> str:
        """The device ``auto`` stands for on this machine."""
        if self.device != "auto":
            return self.device
        import torch

        return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")

    def dtype_on(self, device: str) -> str:
        """The dtype the backbone loads in on ``device``: the given one, ``auto`` by device."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device.startswith("cuda") else "float32"

    @property
    def torch_dtype(self) -> str:
        """The dtype the backbone loads in on :attr:`torch_device`."""
        return self.dtype_on(self.torch_device)


@dataclass
class BackboneConfig(DeviceConfig):
    """Which backbone is loaded, at which pixel cap, and where (every entry point shares these)."""

    backbone: str | None = option(
        "tiny-random-qwen2.5-vl, tiny-random-qwen3-vl, a local checkpoint folder or a hub id "
        "(default: $RESADAPT_BACKBONE, else the bundled backbone)",
        None,
    )
    max_pixels: int | None = option(
        "per-frame pixel cap: the full-resolution (scale 1) size (default: the processor's)", None
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise BudgetError(f"--max-pixels must be positive, got {self.max_pixels}")


@dataclass
class ModelConfig(BackboneConfig, EngineConfig):
    """Which backbone and allocator a pipeline loads, where, and which engine answers (ask, eval and
    the app share it)."""

    allocator: str | None = option(
        "allocator folder or hub id of --policy learned (default: $RESADAPT_ALLOCATOR, else the "
        "bundled allocator when the backbone is the one it was trained against, else none)",
        None,
    )
    allow_mismatched_allocator: bool = option(
        "run an allocator against a backbone it was not trained against (or that it records "
        "nothing about): logged, and shown as allocator_warning in every result",
        False,
    )
    stream_timeout_s: float = option(
        "longest wait for the next piece of a streamed answer, in seconds, before the request "
        "ends with an error",
        STREAM_TIMEOUT_S,
    )

    def __post_init__(self) -> None:
        BackboneConfig.__post_init__(self)
        EngineConfig.__post_init__(self)
        if not self.stream_timeout_s > 0:
            raise BudgetError(f"--stream-timeout-s must be positive, got {self.stream_timeout_s}")
