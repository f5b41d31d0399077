"""The frozen backbone's own view of which chunks a question needs, as a label-free training target.

When the backbone sees every chunk at full resolution, the position that predicts the answer's
first token attends over all visual tokens; the share of that attention falling on each chunk's
tokens (mean over the language model's layers and heads) says where the backbone looks for this
question. The allocator's query detector is distilled toward these shares (``train
--attention-weight``): a dense, per-chunk signal that needs no evidence labels, which the bandit
reward — one number per whole allocation — does not give.

Only the last Q query rows of every attention matrix are needed, so the probe registers its own
attention function (transformers' ``AttentionInterface``): it runs SDPA for the layer's output and
computes those rows' softmax from the same query and keys, O(Q·L) per head. ``output_attentions``
would need the eager kernel and keep every L × L matrix, too much for a real checkpoint's
thousands of visual tokens.

Which rows: ``"last"``, the answer position (the prompt's last token, whatever the chat template
puts before it), or ``"after_video"``, every position after the row's last visual token — found in
the token layout, not assumed: with a real Qwen template (video, then question) they are the
question and the assistant cue (FlexSelect's text queries); with the tiny world's template
(question, then video) only the template tokens and the cue. The ``attention`` policy runs the same
probe on a cheap low-resolution copy of the video, optionally through only the first N layers of
the language model (:func:`stop_after`, a forward hook that ends the pass; FlexSelect's truncated
pre-pass), and turns the shares into scales (resadapt.policies.Attention).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from resadapt.backbone import Backbone, ChunkedVideo

PROBE = "resadapt_last_row_probe"
"""Name the probe's attention function is registered under."""
QUERY_ROWS = ("last", "after_video")
"""Which query positions :func:`chunk_attention` averages (see the module docstring)."""
_ROWS: ContextVar[tuple[list[torch.Tensor], int, bool] | None] = ContextVar(
    "resadapt_probe_rows", default=None
)
"""While recording: (the list rows go to, Q query rows per layer, mean over heads or not)."""


def _last_rows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA for the output; records the last Q query positions' attention weights (B, H, Q, L),
    or their mean over heads (B, Q, L)."""
    output = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, **kwargs
    )
    state = _ROWS.get()
    if state is not None:
        rows, q, mean_heads = state
        length = key.shape[-2]
        heads = query.shape[1] // key.shape[1]  # grouped-query attention: heads per key head
        keys = key.repeat_interleave(heads, dim=1)  # (B, H, L, d)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        logits = (query[:, :, -q:] @ keys.transpose(-1, -2)).float() * scale  # (B, H, Q, L)
        if attention_mask is not None:
            mask = attention_mask[:, :, -q:, :length]  # (B, 1, Q, L)
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask, -torch.inf)
            else:
                logits = logits + mask.float()
        else:  # SDPA skipped the mask (no padding): causal among the Q query rows
            rows_at = torch.arange(length - q, length, device=logits.device)  # (Q,)
            future = torch.arange(length, device=logits.device)[None, :] > rows_at[:, None]
            logits = logits.masked_fill(future, -torch.inf)  # (B, H, Q, L)
        weights = logits.softmax(dim=-1).nan_to_num(0.0)  # a fully masked (padding) row gives 0
        rows.append(weights.mean(dim=1) if mean_heads else weights)
    return output


@functools.cache
def _register() -> None:
    """Register the probe with transformers' attention registries, once, on first use."""
    AttentionInterface.register(PROBE, _last_rows_attention)
    AttentionMaskInterface.register(PROBE, sdpa_mask)


@contextlib.contextmanager
def recording(
    model, num_queries: int = 1, *, mean_heads: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Within the block, the language model's attention layers append the attention weights of
    their last ``num_queries`` query positions, (B, H, Q, L) or with ``mean_heads`` (B, Q, L), to
    the yielded list, one per layer in order; the vision tower is untouched. The model's own
    attention kernel is restored afterwards (the probe runs SDPA inside)."""
    assert num_queries >= 1, num_queries
    text_config = model.config.text_config
    previous = text_config._attn_implementation
    _register()
    rows: list[torch.Tensor] = []
    token = _ROWS.set((rows, num_queries, mean_heads))
    model.set_attn_implementation({"text_config": PROBE})
    try:
        yield rows
    finally:
        model.set_attn_implementation({"text_config": previous})
        _ROWS.reset(token)


class _StopProbe(Exception):
    """Raised by :func:`stop_after`'s hook to end a truncated pass."""


def text_layers(model) -> torch.nn.ModuleList:
    """The language model's decoder layers (Qwen2.5-VL and Qwen3-VL in transformers 5)."""
    return model.model.language_model.layers


@contextlib.contextmanager
def stop_after(model, num_layers: int | None) -> Iterator[None]:
    """Within the block, a forward pass of ``model`` ends after the language model's first
    ``num_layers`` decoder layers (None, or at least the model's depth: the whole pass). A forward
    hook on layer N raises an exception this block swallows: no layer list is changed, and the
    hook is removed however the block ends. Only use it for passes whose output is not needed."""
    layers = text_layers(model)
    if num_layers is None or num_layers >= len(layers):
        yield
        return
    assert num_layers >= 1, num_layers

    def stop(module, args, output) -> None:
        raise _StopProbe

    handle = layers[num_layers - 1].register_forward_hook(stop)
    try:
        yield
    except _StopProbe:
        pass
    finally:
        handle.remove()


def query_rows(is_video: torch.Tensor, real: torch.Tensor, mode: str) -> torch.Tensor:
    """Which of each row's last Q positions are query positions: (B, Q) bool.

    is_video, real: (B, L) bool (visual tokens; non-padding tokens; rows are left-padded so every
    row ends at L - 1). ``"last"``: the last position (Q = 1). ``"after_video"``: the positions
    after the row's last visual token (Q = the most of any row; fewer are True in other rows).
    """
    assert mode in QUERY_ROWS, mode
    if mode == "last":
        return torch.ones(len(is_video), 1, dtype=torch.bool)
    length = is_video.shape[1]
    position = torch.arange(length)  # (L,)
    last_video = torch.where(is_video, position, -1).amax(dim=1)  # (B,)
    assert bool((last_video >= 0).all()), "every row needs visual tokens"
    after = length - 1 - last_video  # (B,) positions after the video, the answer cue among them
    assert bool((after >= 1).all()), "the chat template must put the assistant cue after the video"
    q = int(after.max())
    tail = position[-q:]  # (Q,)
    return (tail[None, :] > last_video[:, None]) & real[:, -q:]  # (B, Q)


@torch.no_grad()
def chunk_attention(
    backbone: Backbone,
    videos: list[ChunkedVideo],
    questions: list[str],
    *,
    queries: Literal["last", "after_video"] = "last",
    num_layers: int | None = None,
) -> list[torch.Tensor]:
    """Per chunk, the share of the query positions' attention to visual tokens that falls on the
    chunk's tokens, mean over the query positions (see :func:`query_rows`), the language model's
    layers (the first ``num_layers``, or all) and heads: one (K_b,) tensor per row, summing to 1
    (float32, CPU). The videos are used as given (training passes full resolution)."""
    inputs = backbone.prepare(videos, questions)
    is_video = (inputs["input_ids"] == backbone.model.config.video_token_id).cpu()  # (B, L)
    chosen = query_rows(is_video, inputs["attention_mask"].bool().cpu(), queries)  # (B, Q)
    with recording(backbone.model, chosen.shape[1], mean_heads=True) as rows:
        with stop_after(backbone.model, num_layers):
            backbone.model(**inputs, logits_to_keep=1)
    per_query = torch.stack(rows).mean(dim=0).cpu()  # (B, Q, L) mean over layers and heads
    w = chosen.float() / chosen.sum(dim=1, keepdim=True)  # (B, Q) mean over the query rows
    weights = torch.einsum("bq,bql->bl", w, per_query)  # (B, L)
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
