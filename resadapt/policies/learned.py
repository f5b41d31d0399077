"""The learned policy: the trained allocator's Beta-mean scale per chunk, and the tensors it reads.

Owns loading an allocator (a folder or a hub id) as a policy, the allocator's batched inputs (the
trainer reads them too) and the checks that an allocator fits a backbone's chunks. Knows nothing
about whether an allocator was trained against the backbone (resadapt.compat) or about training.

Letters: B videos, K chunks, F frames per chunk, S thumbnail side, L query tokens.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from allocator import Allocator, AllocatorConfig, mean_scale
from resadapt.errors import ChunkLimitError, PolicyError
from resadapt.policies.base import AllocationContext, InApp, Policy, PolicyOptions, register_policy
from resadapt.probe import (
    FeatureCache,
    ProbeCost,
    ProbeFeatures,
    model_depth,
    probe_features,
    stack_features,
)

logger = logging.getLogger(__name__)

QUERY_HEAD_SHARE = 0.25
"""Share of the allocator's query window given to a long question's first tokens (the opening of
its stem); the rest holds its last tokens, where a multiple-choice prompt lists the options."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A Hugging Face hub id (owner/name)."""


def allocator_inputs(
    ctxs: list[AllocationContext],
    tokenizer,
    max_query_tokens: int,
    device="cpu",
    probe: list[ProbeFeatures] | None = None,
) -> dict[str, torch.Tensor]:
    """Batch B contexts for the allocator, padding chunks and query tokens.

    Returns thumbs (B, K, F, 3, S, S) float in [0, 1], query_ids / query_mask (B, L),
    chunk_mask (B, K) bool and chunk_times (B, K) seconds, and with ``probe`` (one pass per
    context, for a probe head) its tensors (resadapt.probe.stack_features). A question longer than
    the window is cut to its head and tail (:func:`query_window`), noted in its context's ``notes``.
    """
    k_max = max(c.num_chunks for c in ctxs)
    f = ctxs[0].frames_per_chunk
    s = ctxs[0].thumbs.shape[1]
    thumbs = torch.zeros(len(ctxs), k_max, f, 3, s, s)
    chunk_mask = torch.zeros(len(ctxs), k_max, dtype=torch.bool)
    chunk_times = torch.zeros(len(ctxs), k_max)
    for b, c in enumerate(ctxs):
        k = c.num_chunks
        t = torch.from_numpy(c.chunked_thumbs()).float().div(255)  # (K, F, S, S, 3)
        thumbs[b, :k] = t.permute(0, 1, 4, 2, 3)
        chunk_mask[b, :k] = True
        chunk_times[b, :k] = torch.from_numpy(c.chunk_times()).float()
    query_ids = torch.full((len(ctxs), max_query_tokens), tokenizer.pad_token_id)  # (B, L)
    query_mask = torch.zeros(len(ctxs), max_query_tokens, dtype=torch.bool)  # (B, L)
    for b, ids in enumerate(tokenizer([c.question for c in ctxs])["input_ids"]):
        if len(ids) > max_query_tokens:
            head = int(max_query_tokens * QUERY_HEAD_SHARE)
            ctxs[b].notes.append(
                f"the allocator read {max_query_tokens} of the question's {len(ids)} tokens: the "
                f"first {head} and the last {max_query_tokens - head}"
            )
        ids = torch.tensor(query_window(ids, max_query_tokens))
        span = slice(max_query_tokens - len(ids), None)
        if tokenizer.padding_side != "left":
            span = slice(0, len(ids))
        query_ids[b, span], query_mask[b, span] = ids, True
    extra = stack_features(probe, k_max, device) if probe is not None else {}
    return {
        "thumbs": thumbs.to(device),
        "query_ids": query_ids.to(device),
        "query_mask": query_mask.to(device),
        "chunk_mask": chunk_mask.to(device),
        "chunk_times": chunk_times.to(device),
        **extra,
    }


def context_probe(
    config: AllocatorConfig,
    ctx: AllocationContext,
    probe_model=None,
    cache: FeatureCache | None = None,
    key: str | None = None,
) -> ProbeFeatures:
    """The probe pass a probe head reads for one context: through ``probe_model`` (a smaller
    checkpoint of the backbone's family) or the context's backbone, only as deep as the head reads
    (``config.probe_layers``), from ``cache`` by (``key``, question, chunks) when given."""
    model = probe_model if probe_model is not None else ctx.backbone
    if ctx.video is None or model is None:
        raise PolicyError("the probe head needs the decoded video and the backbone")
    if model is not ctx.backbone and model.geometry.factor != ctx.backbone.geometry.factor:
        raise PolicyError(
            f"the probe VLM {model.name} has a patch factor of {model.geometry.factor} but the "
            f"backbone {ctx.backbone.name} of {ctx.backbone.geometry.factor}; the probe must be a "
            "checkpoint of the backbone's family"
        )
    depth = model_depth(model)
    if config.probe_layers > depth:
        raise PolicyError(
            f"the probe head reads layer {config.probe_layers} but the probe VLM has {depth} layers"
        )

    def compute() -> ProbeFeatures:
        return probe_features(
            model,
            ctx.video,
            ctx.question,
            ctx.frames_per_chunk,
            probe_budget=config.probe_budget,
            num_layers=config.probe_layers,
        )

    if cache is None or key is None:
        return compute()
    return cache.get((key, ctx.question, ctx.num_chunks), compute)


def query_window(ids: list[int], max_tokens: int) -> list[int]:
    """A question's token ids fitted to the allocator's window: all of them when they fit, else the
    first ``QUERY_HEAD_SHARE`` of the window and the last tokens for the rest (the stem's opening
    and the options, never silently only the head)."""
    if len(ids) <= max_tokens:
        return list(ids)
    head = int(max_tokens * QUERY_HEAD_SHARE)
    return list(ids[:head]) + list(ids[len(ids) - (max_tokens - head) :])


@register_policy
class Learned(Policy):
    """The trained allocator: Beta-mean scale per chunk (deterministic at inference)."""

    name = "learned"
    description = "allocator"
    needs_allocator = True
    app = InApp(10)

    def __init__(self, allocator, tokenizer, *, path: str | None = None, probe_model=None):
        self.allocator = allocator.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.probe_model = probe_model
        """The probe VLM when it is not the backbone (a smaller checkpoint of its family)."""
        cfg = allocator.config
        self.runs_probe = cfg.thumb_encoder == "probe"
        """A probe head runs the probe pass (its cost is reported as ``attention``'s)."""
        self.fills_budget = cfg.fills_budget
        """False: the budget is a ceiling the head may stay under."""
        self.warning: str | None = None
        """Set when the allocator runs against a backbone it does not match (shown with results)."""

    @classmethod
    def load(
        cls,
        path: str | Path,
        tokenizer,
        backbone_model=None,
        check: Callable[[AllocatorConfig], None] | None = None,
    ) -> Learned:
        """Load an allocator: a local folder (config.json + model.safetensors) or a hub id.

        ``check`` sees the allocator's config before anything is wired to the backbone (e.g.
        resadapt.compat's compatibility check) and may raise.
        """
        check_allocator_path(str(path))
        try:
            alloc = Allocator.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise PolicyError(
                f"cannot load allocator {path}: {str(e).splitlines()[0] if str(e) else e!r}"
            ) from e
        if check is not None:
            check(alloc.config)
        if alloc.config.query_encoder == "backbone":
            if backbone_model is None:
                raise PolicyError(f"allocator {path} needs the backbone's input embeddings")
            alloc.set_query_embeddings(backbone_model.get_input_embeddings().weight)
        return cls(alloc, tokenizer, path=str(path), probe_model=load_probe_model(alloc.config))

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Policy:
        """The loaded allocator itself; PolicyError when none is loaded, or when a probe head is
        asked to run its probe shallower than the layer it reads."""
        learned = options.learned
        if learned is None:
            raise PolicyError("the learned policy needs an allocator checkpoint (--allocator PATH)")
        cfg = getattr(learned, "allocator", None)
        cfg = cfg.config if cfg is not None else None
        if (
            cfg is not None
            and cfg.thumb_encoder == "probe"
            and options.probe_layers is not None
            and options.probe_layers < cfg.probe_layers
        ):
            raise PolicyError(
                f"the allocator's probe head reads layer {cfg.probe_layers}; --probe-layers "
                f"{options.probe_layers} would stop the probe before it (use at least "
                f"{cfg.probe_layers}, or none)"
            )
        return learned

    @property
    def thumb_side(self) -> int:
        return self.allocator.config.thumb_side

    def check_fit(self, frames_per_chunk: int) -> None:
        """Refuse a backbone whose chunks hold another number of frames than the allocator's."""
        check_fit(self.allocator.config, frames_per_chunk, f"allocator {self.path or '(unsaved)'}")

    @torch.no_grad()
    def scales(self, ctx: AllocationContext) -> np.ndarray:
        cfg = self.allocator.config
        if ctx.num_chunks > cfg.max_chunks:
            raise ChunkLimitError(
                f"the video was sampled into {ctx.num_chunks} chunks "
                f"({ctx.num_chunks * ctx.frames_per_chunk} frames); the allocator accepts at most "
                f"{cfg.max_chunks} ({cfg.max_chunks * ctx.frames_per_chunk} frames): lower "
                "--frames or --fps"
            )
        device = next(self.allocator.parameters()).device
        probe = None
        if self.runs_probe:
            probe = [context_probe(cfg, ctx, self.probe_model)]
            ctx.probe = ProbeCost(visual_tokens=probe[0].visual_tokens, seconds=probe[0].seconds)
        batch = allocator_inputs([ctx], self.tokenizer, cfg.max_query_tokens, device, probe)
        for note in ctx.notes:
            logger.info("%s", note)
        out = self.allocator(**batch)
        scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
        return scales[0].cpu().numpy()  # (K,)


def load_probe_model(config: AllocatorConfig):
    """The probe VLM a probe head was trained with when it is not the backbone (``probe_backbone``,
    loaded like a backbone, on the CPU in float32), None otherwise; PolicyError when its weights are
    not the ones the head was trained with."""
    if config.thumb_encoder != "probe" or config.probe_backbone is None:
        return None
    from resadapt.backbone import Backbone, weights_fingerprint

    model = Backbone.load(config.probe_backbone)
    found = weights_fingerprint(model)
    if config.probe_weights_sha256 and found and found != config.probe_weights_sha256:
        raise PolicyError(
            f"the probe head was trained with the probe VLM {config.probe_backbone} of other "
            "weights (its weights fingerprint differs); use the checkpoint it was trained with"
        )
    return model


def check_allocator_path(path: str) -> None:
    """Raise PolicyError unless ``path`` is an allocator folder (with config.json) or a hub id."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise PolicyError(f"no allocator checkpoint at {path} (config.json is missing)")
    elif not HUB_ID.match(path):
        raise PolicyError(f"no allocator checkpoint at {path} (no such folder, and not a hub id)")


def check_fit(config: AllocatorConfig, frames_per_chunk: int, what: str) -> None:
    """Raise PolicyError when an allocator (``what``) reads chunks of another size than the
    backbone makes."""
    if config.frames_per_chunk != frames_per_chunk:
        raise PolicyError(
            f"{what} reads chunks of {config.frames_per_chunk} frames but the backbone makes "
            f"chunks of {frames_per_chunk}"
        )
