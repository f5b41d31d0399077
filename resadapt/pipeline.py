"""One question end to end: decode once → allocate → fit the budget → resize → encode and answer.

Owns the request and model configuration records, loading, and the timing breakdown; the
allocation and result records are resadapt.records (the JSON contract of ``resadapt.ask --json``
and the app's ``/answer``). Knows nothing about user interfaces or training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from allocator import AllocatorConfig
from resadapt import compat, prune
from resadapt.backbone import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_MAX_BATCH_TOKENS,
    STREAM_TIMEOUT_S,
    Backbone,
    ChunkedVideo,
    check_attn_implementation,
)
from resadapt.cli import option
from resadapt.engines import EngineConfig, VllmEngine, make_engine
from resadapt.errors import BudgetError, EngineError, validate_question
from resadapt.policies import (
    PROBE_BUDGET,
    RESIZE,
    SELECT_SIZES,
    THUMB_SIDE,
    AllocationContext,
    Attention,
    Learned,
    Operator,
    Policy,
    describe_policies,
    make_policy,
    policy_choices,
    policy_class,
)
from resadapt.records import Allocation, Result
from resadapt.video import SampledVideo, load_video

logger = logging.getLogger(__name__)

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


def load_backbone(config: BackboneConfig, device: str | None = None) -> Backbone:
    """Load the configured backbone (the default one when none is named); warn when random.

    ``config`` is any :class:`BackboneConfig` (the trainer's too); ``device`` overrides its device
    (a training process's own).
    """
    from resadapt.assets import default_backbone, is_random_backbone

    name = config.backbone or default_backbone()
    device = device or config.torch_device
    backbone = Backbone.load(
        name,
        dtype=config.dtype_on(device),
        device=device,
        max_pixels=config.max_pixels,
        attn_implementation=config.attn_implementation,
        device_map=config.device_map,
        max_batch_tokens=config.max_batch_tokens,
        # the trainer's config has no stream timeout: training never streams an answer
        stream_timeout_s=getattr(config, "stream_timeout_s", STREAM_TIMEOUT_S),
    )
    if is_random_backbone(name):
        logger.warning(
            "backbone %s has random weights: its answers are meaningless (smoke runs only)", name
        )
    return backbone


def load_allocator(path: str, backbone: Backbone, *, allow_mismatched: bool = False) -> Learned:
    """Load the allocator at ``path`` (folder or hub id) for ``backbone``, on its device.

    An allocator that does not record this backbone is refused (PolicyError, one sentence naming
    both), unless ``allow_mismatched``: then it runs with ``Learned.warning`` set (logged), and
    query token ids beyond its table are folded into it.
    """
    warnings = []

    def check(config) -> None:
        warnings.append(compat.check(config, backbone, path, allow_mismatched=allow_mismatched))

    learned = Learned.load(path, backbone.tokenizer, backbone.model, check=check)
    learned.warning = warnings[0]
    query = getattr(learned.allocator, "query_encoder", None)  # a probe head reads no query table
    folds = query is not None and query.mode == "learned"
    if learned.warning and folds and len(backbone.tokenizer) > query.vocab_size:
        query.fold_ids = True
        learned.warning += (
            f"; query token ids at or above {query.vocab_size:,} are folded into its table"
        )
    learned.check_fit(backbone.geometry.frames_per_chunk)
    learned.allocator.to(backbone.device)
    return learned


def default_allocator_for(config: ModelConfig, backbone: Backbone) -> str | None:
    """The allocator a pipeline loads: ``--allocator``, else $RESADAPT_ALLOCATOR (both explicit:
    a mismatch is refused), else the bundled allocator only when it records this backbone."""
    from resadapt.assets import ALLOCATOR_ENV, BUNDLED_ALLOCATOR

    explicit = config.allocator or os.environ.get(ALLOCATOR_ENV)
    if explicit:
        return explicit
    config_file = BUNDLED_ALLOCATOR / "config.json"
    if not config_file.is_file():
        return None
    recorded = AllocatorConfig.from_dict(json.loads(config_file.read_text()))
    if compat.matches(recorded, backbone):
        return str(BUNDLED_ALLOCATOR)
    logger.info(
        "the bundled allocator was trained against %s, not %s: no allocator is loaded",
        recorded.backbone,
        backbone.name,
    )
    return None


def load_pipeline(config: ModelConfig) -> Pipeline:
    """Load the backbone, the allocator (see :func:`default_allocator_for`) and the engine once.

    With ``--engine vllm`` the backbone still loads here: its geometry, prompt and probe stay in
    front of the vLLM server, which answers.
    """
    backbone = load_backbone(config)
    path = default_allocator_for(config, backbone)
    allow = config.allow_mismatched_allocator
    learned = load_allocator(path, backbone, allow_mismatched=allow) if path else None
    return Pipeline(backbone, learned, engine=make_engine(config, backbone))


class Pipeline:
    """A loaded backbone (and optional allocator) that answers questions about videos."""

    def __init__(
        self, backbone: Backbone, learned: Learned | None = None, engine: VllmEngine | None = None
    ):
        self.backbone = backbone
        self.learned = learned
        self.engine = engine
        """The vLLM engine that answers, or None: the backbone itself (transformers)."""
        if learned is not None:
            learned.check_fit(backbone.geometry.frames_per_chunk)

    @property
    def default_policy(self) -> str:
        """learned when an allocator is loaded, else attention (query-aware, any checkpoint)."""
        return Learned.name if self.learned is not None else Attention.name

    def policy_name(self, request: Request) -> str:
        """The request's policy, or the pipeline's default when it names none."""
        return request.policy or self.default_policy

    # ------------------------------------------------------------------ stages
    def decode(self, path: str, request: Request) -> SampledVideo:
        """Sample the frames once, at the backbone's base size."""
        return load_video(
            path, geometry=self.backbone.geometry, fps=request.fps, num_frames=request.num_frames
        )

    def context(
        self, video: SampledVideo, question: str, thumb_side: int = THUMB_SIDE
    ) -> AllocationContext:
        """A policy's view: thumbnails of side ``thumb_side`` derived from the decoded frames."""
        return AllocationContext(
            thumbs=video.thumbs(thumb_side),
            timestamps=video.timestamps,
            question=question,
            frames_per_chunk=self.backbone.geometry.frames_per_chunk,
            video=video,
            backbone=self.backbone,
        )

    def policy(self, request: Request) -> Policy:
        return make_policy(
            self.policy_name(request),
            scale=request.scale,
            seed=request.seed,
            learned=self.learned,
            probe_budget=request.probe_budget,
            probe_layers=request.probe_layers,
            contextual_share=request.contextual_share,
            select_sizes=request.select_sizes,
        )

    def allocate(
        self,
        video: SampledVideo,
        request: Request,
        policy: Policy | None = None,
        scales: np.ndarray | None = None,
        operator: Operator | None = None,
        fill: bool | None = None,
    ) -> Allocation:
        """Scales from the policy (or given), fitted to the request's budget by its operator (given
        scales go through ``operator``, by default resize; the request's policy says whether the
        budget applies); sizes, tokens. ``fill``: whether the fit raises the scales to use the
        budget (None: the policy's ``fills_budget``; given scales: True)."""
        geometry = self.backbone.geometry
        base_h, base_w = video.base_size
        k = len(video.frames) // geometry.frames_per_chunk
        vanilla = self.vanilla_tokens(video)
        probe, notes, operator = None, [], operator or RESIZE  # given scales: resized by default
        if scales is None:
            policy = policy or self.policy(request)
            ctx = self.context(video, request.question, policy.thumb_side)
            scales = policy.scales(ctx)
            assert (ctx.probe is not None) == policy.runs_probe, policy.name
            probe, notes, operator = ctx.probe, ctx.notes, policy.operator
        scales = np.clip(np.asarray(scales, dtype=np.float64), 1e-6, 1.0)  # (K,)
        assert scales.shape == (k,), (scales.shape, k)
        cap = self.token_cap(request, vanilla)
        fit = (policy if policy is not None else policy_class(self.policy_name(request))).fit
        encode_cap = self.encode_cap(request, vanilla)
        if fill is None:
            fill = policy.fills_budget if policy is not None else True
        scales, pruned_to = fit(scales, geometry, base_h, base_w, cap, operator, encode_cap, fill)
        sizes = [geometry.scaled_size(base_h, base_w, s) if s > 0 else (0, 0) for s in scales]
        tokens = [geometry.tokens(h, w) if h else 0 for h, w in sizes]
        if pruned_to is not None and pruned_to < sum(tokens) == vanilla:
            notes.append(
                f"the vision tower encoded all {vanilla} visual tokens at full resolution; "
                f"{pruned_to} reached the language model"
            )
        elif pruned_to is not None and pruned_to < sum(tokens):
            notes.append(
                f"the vision tower encoded {sum(tokens)} of the {vanilla} full-resolution visual "
                f"tokens; {pruned_to} reached the language model"
            )
        return Allocation(
            scales=scales,
            sizes=sizes,
            tokens=tokens,
            vanilla_tokens=vanilla,
            probe=probe,
            notes=notes,
            pruned_to=pruned_to,
            contextual_share=request.contextual_share,
        )

    def vanilla_tokens(self, video: SampledVideo) -> int:
        """Visual tokens of every chunk of ``video`` at scale 1.0 (the full-resolution baseline)."""
        geometry = self.backbone.geometry
        return len(video.frames) // geometry.frames_per_chunk * geometry.tokens(*video.base_size)

    @staticmethod
    def token_cap(request: Request, vanilla_tokens: int) -> int | None:
        """The visual-token ceiling the request sets, or None."""
        caps = []
        if request.budget is not None:
            caps.append(math.floor(request.budget * vanilla_tokens + 1e-9))
        if request.max_visual_tokens is not None:
            caps.append(request.max_visual_tokens)
        return min(caps) if caps else None

    @staticmethod
    def encode_cap(request: Request, vanilla_tokens: int) -> int:
        """The visual tokens the tower may encode before pruning (``scorer+…+prune`` policies):
        ``--encode-budget`` (default :data:`ENCODE_BUDGET`) of the full-resolution tokens."""
        share = ENCODE_BUDGET if request.encode_budget is None else request.encode_budget
        return math.floor(share * vanilla_tokens + 1e-9)

    def chunked(self, video: SampledVideo, allocation: Allocation) -> ChunkedVideo:
        """Resize every kept chunk's frames to its allocated size (dropped chunks are left out)."""
        return ChunkedVideo.from_frames(
            video.frames,
            video.timestamps,
            video.sample_fps,
            allocation.sizes,
            self.backbone.geometry.frames_per_chunk,
            keep=allocation.kept,
        )

    def encode(self, inputs, allocations: list[Allocation]):
        """The language model's inputs for prepared rows: ``inputs`` themselves, or for pruned
        allocations the pruned inputs (the vision tower runs here; every allocation of a batch has
        the same operator). Fills each pruned allocation's ``kept_tokens``."""
        if allocations[0].pruned_to is None:
            return inputs
        pruned = prune.prune(
            self.backbone.model,
            inputs,
            [sum(a.kept) for a in allocations],
            [a.pruned_to for a in allocations],
            allocations[0].contextual_share,
            pad_token_id=self.backbone.tokenizer.pad_token_id,
        )
        for allocation, kept in zip(allocations, pruned.kept_per_chunk, strict=True):
            per_item = iter(kept)  # the encoded chunks' counts; a dropped chunk keeps 0
            allocation.kept_tokens = [next(per_item) if on else 0 for on in allocation.kept]
        return pruned.inputs

    # ------------------------------------------------------------------ whole questions
    def ask(self, path: str, request: Request) -> Result:
        """Answer one question; the full result with the answer filled in."""
        *_, result = self.ask_stream(path, request)
        return result

    def ask_stream(self, path: str, request: Request) -> Iterator[Result]:
        """Yield the result as the answer grows: first with an empty answer, then per piece."""
        t0 = time.perf_counter()
        video = self.decode(path, request)
        t1 = time.perf_counter()
        allocation = self.allocate(video, request)
        timings = {"decode_s": t1 - t0, "allocate_s": time.perf_counter() - t1}
        yield from self.answer_stream(video, allocation, request, timings)

    def answer_stream(
        self,
        video: SampledVideo,
        allocation: Allocation,
        request: Request,
        timings: dict,
        history: Sequence[tuple[str, str]] = (),
    ) -> Iterator[Result]:
        """Encode the allocated chunks and stream the answer into a growing Result.

        ``timings`` holds the stages already spent (decode_s, allocate_s); probe_s (the part of
        allocate_s the policy's probe pass took), backbone_s and total_s are added here (backbone_s
        covers resizing, the processor, prefill and generation). ``history``: a chat's earlier
        (question, answer) turns, as text before this question (:meth:`Backbone.prompt`).
        """
        t3 = time.perf_counter()
        chunked = self.chunked(video, allocation)
        if self.engine is not None:
            yield from self._remote_stream(
                video, allocation, request, timings, chunked, t3, history
            )
            return
        inputs = self.backbone.prepare([chunked], [request.question], histories=[history])
        produced = self.backbone.chunk_tokens(inputs)
        assert produced == [t for t in allocation.tokens if t], (produced, allocation.tokens)
        t4 = time.perf_counter()
        inputs = self.encode(inputs, [allocation])
        tower_s = time.perf_counter() - t4 if allocation.pruned_to is not None else 0.0
        result = self._result(video, allocation, request, "")
        result.timings = {
            **timings,
            "probe_s": allocation.probe_s,
            "tower_s": tower_s,
            "backbone_s": 0.0,
            "total_s": 0.0,
        }
        yield result
        pieces = []
        for piece in self.backbone.stream(inputs, request.max_new_tokens):
            pieces.append(piece)
            result.answer = "".join(pieces).strip()
            result.timings["backbone_s"] = time.perf_counter() - t3
            yield result
        result.timings["backbone_s"] = time.perf_counter() - t3
        result.timings["total_s"] = sum(
            result.timings[k] for k in ("decode_s", "allocate_s", "backbone_s")
        )
        yield result

    def _remote_stream(
        self,
        video: SampledVideo,
        allocation: Allocation,
        request: Request,
        timings: dict,
        chunked: ChunkedVideo,
        t3: float,
        history: Sequence[tuple[str, str]] = (),
    ) -> Iterator[Result]:
        """:meth:`answer_stream` through :attr:`engine`: the whole answer in one piece, after the
        check that the server's processor produced the allocated visual tokens."""
        check_remote(allocation)
        result = self._result(video, allocation, request, "")
        result.timings = {**timings, "probe_s": allocation.probe_s, "tower_s": 0.0}
        result.timings |= {"backbone_s": 0.0, "total_s": 0.0}
        yield result
        reply = self.engine.generate(
            chunked, request.question, request.max_new_tokens, history=history
        )
        check_tokens(reply.visual_tokens, allocation)
        result.answer = reply.text
        result.timings["backbone_s"] = time.perf_counter() - t3
        result.timings["total_s"] = sum(
            result.timings[k] for k in ("decode_s", "allocate_s", "backbone_s")
        )
        yield result

    def _result(
        self, video: SampledVideo, allocation: Allocation, request: Request, answer: str
    ) -> Result:
        f = self.backbone.geometry.frames_per_chunk
        frames, chunks = [], []
        for k, (scale, (h, w), tokens) in enumerate(
            zip(allocation.scales, allocation.sizes, allocation.chunk_tokens, strict=True)
        ):
            members = list(range(k * f, (k + 1) * f))
            for i in members:
                frames.append(
                    {
                        "index": int(video.indices[i]),
                        "timestamp": round(float(video.timestamps[i]), 4),
                        "chunk": k,
                        "scale": round(float(scale), 4),
                        "height": h,
                        "width": w,
                    }
                )
            chunks.append(
                {
                    "frames": [int(video.indices[i]) for i in members],
                    "scale": round(float(scale), 4),
                    "height": h,
                    "width": w,
                    "visual_tokens": tokens,
                    "encoded_tokens": allocation.tokens[k],
                    "dropped": allocation.tokens[k] == 0,
                }
            )
        spent = allocation.visual_tokens
        policy = self.policy_name(request)
        learned = self.learned if policy_class(policy).needs_allocator else None
        return Result(
            answer=answer,
            backbone=self.backbone.name,
            policy=policy,
            frames=frames,
            chunks=chunks,
            visual_tokens=spent,
            vanilla_visual_tokens=int(allocation.vanilla_tokens),
            retention=round(spent / allocation.vanilla_tokens, 6),
            encoded_visual_tokens=allocation.encoded_tokens,
            probe_visual_tokens=allocation.probe_visual_tokens,
            allocator_warning=learned.warning if learned is not None else None,
            notes=list(allocation.notes),
        )


def check_remote(allocation: Allocation) -> None:
    """Raise EngineError for an allocation a vLLM server cannot run (post-encoder pruning)."""
    if allocation.pruned_to is not None:
        raise EngineError(
            "post-encoder pruning (prune operators) runs inside the transformers engine; use "
            "--engine transformers for this policy"
        )


def check_tokens(produced: int, allocation: Allocation) -> None:
    """Raise EngineError when the server's processor produced other visual tokens than allocated
    (a checkpoint whose processor resizes frames would spend another budget)."""
    if produced != allocation.visual_tokens:
        raise EngineError(
            f"the vLLM server produced {produced} visual tokens for an allocation of "
            f"{allocation.visual_tokens}; its processor resized the chunks"
        )
