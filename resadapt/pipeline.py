"""One question end to end: decode once → allocate → fit the budget → resize → encode and answer.

Owns loading (the backbone, the allocator) and running one question, with its timing breakdown.
What a user chooses (Request, ModelConfig) is resadapt.config; the allocation and result records
are resadapt.records (the JSON contract of ``resadapt.ask --json`` and the app's ``/answer``).
Knows nothing about user interfaces or training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np

from allocator import AllocatorConfig
from resadapt import compat, prune
from resadapt.backbone import (
    STREAM_TIMEOUT_S,
    Backbone,
    ChunkedVideo,
)
from resadapt.config import ENCODE_BUDGET, BackboneConfig, ModelConfig, Request
from resadapt.engines import VllmEngine, make_engine
from resadapt.errors import EngineError
from resadapt.policies import (
    RESIZE,
    THUMB_SIDE,
    AllocationContext,
    Attention,
    Learned,
    Operator,
    Policy,
    make_policy,
    policy_class,
)
from resadapt.records import Allocation, Result
from resadapt.video import SampledVideo, load_video

logger = logging.getLogger(__name__)


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
