"""The frozen backbone's own view of which chunks a question needs, as a label-free training target.

When the backbone sees every chunk at full resolution, the position that predicts the answer's
first token attends over all visual tokens; the share of that attention falling on each chunk's
tokens (mean over the language model's layers and heads) says where the backbone looks for this
question. The allocator's query detector is distilled toward these shares (``train
--attention-weight``): a dense, per-chunk signal that needs no evidence labels, which the bandit
reward — one number per whole allocation — does not give.

Only the last query row of every attention matrix is needed, so the probe registers its own
attention function (transformers' ``AttentionInterface``): it runs SDPA for the layer's output and
computes the last row's softmax from the same query and keys, O(L) per head. ``output_attentions``
would need the eager kernel and keep every L × L matrix, too much for a real checkpoint's
thousands of visual tokens.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from resadapt.backbone import Backbone, ChunkedVideo

PROBE = "resadapt_last_row_probe"
"""Name the probe's attention function is registered under."""
_ROWS: ContextVar[list[torch.Tensor] | None] = ContextVar("resadapt_probe_rows", default=None)


def _last_row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA for the output; records the last query position's attention weights (B, H, L)."""
    output = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, **kwargs
    )
    rows = _ROWS.get()
    if rows is not None:
        heads = query.shape[1] // key.shape[1]  # grouped-query attention: heads per key head
        keys = key.repeat_interleave(heads, dim=1)  # (B, H, L, d)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        logits = (query[:, :, -1:] @ keys.transpose(-1, -2)).squeeze(2).float() * scale  # (B, H, L)
        if attention_mask is not None:
            mask = attention_mask[:, :, -1, : logits.shape[-1]]  # (B, 1, L)
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask, -torch.inf)
            else:
                logits = logits + mask.float()
        rows.append(logits.softmax(dim=-1))
    return output


@functools.cache
def _register() -> None:
    """Register the probe with transformers' attention registries, once, on first use."""
    AttentionInterface.register(PROBE, _last_row_attention)
    AttentionMaskInterface.register(PROBE, sdpa_mask)


@contextlib.contextmanager
def recording(model) -> Iterator[list[torch.Tensor]]:
    """Within the block, the language model's attention layers append their last query row's
    weights (B, H, L) to the yielded list, one per layer in order; the vision tower is untouched.
    The model's own attention kernel is restored afterwards (the probe runs SDPA inside)."""
    text_config = model.config.text_config
    previous = text_config._attn_implementation
    _register()
    rows: list[torch.Tensor] = []
    token = _ROWS.set(rows)
    model.set_attn_implementation({"text_config": PROBE})
    try:
        yield rows
    finally:
        model.set_attn_implementation({"text_config": previous})
        _ROWS.reset(token)


@torch.no_grad()
def chunk_attention(
    backbone: Backbone, videos: list[ChunkedVideo], questions: list[str]
) -> list[torch.Tensor]:
    """Per chunk, the share of the answer position's attention to visual tokens that falls on the
    chunk's tokens, mean over the language model's layers and heads: one (K_b,) tensor per row,
    summing to 1 (float32, CPU). The videos are used as given (training passes full resolution)."""
    inputs = backbone.prepare(videos, questions)
    with recording(backbone.model) as rows:
        backbone.model(**inputs, logits_to_keep=1)
    weights = torch.stack(rows).mean(dim=(0, 2)).cpu()  # (B, L) mean over layers and heads
    is_video = (inputs["input_ids"] == backbone.model.config.video_token_id).cpu()  # (B, L)
    tokens = backbone.chunk_tokens(inputs)  # sum over rows of K_b
    shares, first = [], 0
    for b, video in enumerate(videos):
        k = len(video.chunks)
        counts = torch.tensor(tokens[first : first + k])
        first += k
        owner = torch.repeat_interleave(torch.arange(k), counts)  # (N_b,) chunk of each token
        visual = weights[b, is_video[b]]  # (N_b,) in the order the chunks were placed
        assert len(visual) == len(owner), "every chunk's visual tokens must be in the prompt"
        mass = torch.zeros(k).index_add_(0, owner, visual)  # (K_b,)
        shares.append(mass / mass.sum().clamp_min(1e-12))
    return shares


def distillation_loss(
    log_shares: torch.Tensor, targets: torch.Tensor, chunk_mask: torch.Tensor
) -> torch.Tensor:
    """KL(target ‖ predicted) over each video's valid chunks, mean over videos.

    log_shares (B, K) the detector's log-softmax over chunks (0 on padding), targets (B, K)
    attention shares (0 on padding), chunk_mask (B, K) → scalar; 0 when the shares agree.
    """
    t = targets.to(log_shares.dtype)
    kl = torch.where(chunk_mask & (t > 0), t * (t.clamp_min(1e-12).log() - log_shares), 0.0)
    return kl.sum(dim=1).mean()


def pad_targets(shares: list[torch.Tensor], k_max: int, temperature: float = 1.0) -> torch.Tensor:
    """Stack per-video shares (K_b,) into (B, K_max), zero on padding, each sharpened to
    share^(1/temperature) and renormalised (temperature < 1 turns the layer-and-head average,
    which keeps a diffuse floor from the layers that look everywhere, into a clear ranking)."""
    out = torch.zeros(len(shares), k_max)  # (B, K_max)
    for b, s in enumerate(shares):
        out[b, : len(s)] = (s.double().clamp_min(1e-12).log() / temperature).softmax(dim=0)
    return out
