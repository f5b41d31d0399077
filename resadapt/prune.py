"""Post-encoder token pruning (the ``prune`` policy): VisionZip as its Qwen ports apply it.

Every chunk goes through the vision tower at full resolution; the language model then receives
only a budget's worth of the merged visual tokens. Owns scoring the tower's tokens, choosing the
kept ones and building the language model's inputs from them. Knows nothing about policies,
budgets or videos beyond the prepared inputs.

  * Score of a merged token: the attention its patches receive in the tower's last
    full-attention block (Qwen2.5-VL: the last of ``fullatt_block_indexes``; Qwen3-VL: every
    block attends over its whole frame group, so the last block), mean over heads and over every
    query of its attention segment, then mean over the 2×2 merge unit, mapped back from Qwen2.5-VL's
    window order to the language model's order. The row is recomputed from the block's own query
    and key projections (as FlashVID does), so the tower keeps its SDPA / flash kernel.
  * Kept tokens: the ``n − c`` highest-scored (dominant) plus ``c = round(share · n)`` contextual
    tokens: targets evenly spaced over the remaining tokens, each remaining token merged (mean)
    into the target whose feature it is most cosine-similar to. VisionZip measures that similarity
    on the last layer's keys; the merged output features are used here because they are what the
    language model reads and they exist for both families without another hook. Qwen3-VL's
    deepstack features are kept and merged with the same indices and groups.
  * Positions: a kept token keeps its 3-D rope position from the unpruned sequence (a contextual
    token its target's); text tokens keep theirs, so the positions of every decoding step equal the
    unpruned run's. Row 0 of the (4, B, L') position ids, the plain index into the cache, is
    recounted.
  * The pruned features reach ``generate`` / ``forward`` as transformers' ``mm_encoder_outputs``
    (the precomputed-encoder path), so the tower is not run twice.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
from transformers import BatchFeature
from transformers.vision_utils import get_vision_window_index

CONTEXTUAL_SHARE = 0.05
"""Default share of the kept tokens that are contextual (merged) tokens."""
HEAD_GROUP = 4
"""Attention heads scored at once (bounds the scoring's memory to HEAD_GROUP × m² per segment)."""


@dataclass
class TowerOutput:
    """The vision tower's output for every chunk item, with each merged token's score."""

    output: object
    """transformers' encoder output (``pooler_output``: per item (n_k, D); Qwen3-VL also
    ``deepstack_features``: per layer, per item (n_k, D))."""
    scores: list[torch.Tensor]
    """Per item (n_k,) float32: attention received in the last full-attention block."""


def score_block(visual) -> int:
    """Index of the tower block whose attention scores the tokens (see the module docstring)."""
    full = getattr(visual, "fullatt_block_indexes", None)
    return int(full[-1]) if full else len(visual.blocks) - 1


@torch.no_grad()
def encode(model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> TowerOutput:
    """Run the vision tower once over every item and score its merged tokens.

    pixel_values_videos: the processor's flattened patches; video_grid_thw: (N_items, 3).
    """
    visual = model.model.visual
    block = visual.blocks[score_block(visual)].attn
    rotary = sys.modules[type(block).__module__].apply_rotary_pos_emb_vision
    received: list[torch.Tensor] = []

    def hook(module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]  # (S, C) patches in block order
        cu = kwargs["cu_seqlens"].tolist()
        cos, sin = kwargs["position_embeddings"]
        n = hidden.shape[0]
        q, k, _ = module.qkv(hidden).reshape(n, 3, module.num_heads, -1).permute(1, 0, 2, 3)
        q, k = rotary(q, k, cos, sin)
        q, k = q.transpose(0, 1).float(), k.transpose(0, 1).float()  # (H, S, d)
        total = torch.zeros(n, device=hidden.device)
        for start, end in zip(cu[:-1], cu[1:], strict=True):
            for h in range(0, q.shape[0], HEAD_GROUP):
                qs, ks = q[h : h + HEAD_GROUP, start:end], k[h : h + HEAD_GROUP, start:end]
                weights = (qs @ ks.transpose(-1, -2) * module.scaling).softmax(dim=-1)  # (g, m, m)
                total[start:end] += weights.sum(dim=(0, 1)) / (q.shape[0] * (end - start))
        received.append(total)

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        output = model.model.get_video_features(
            pixel_values_videos, video_grid_thw, return_dict=True
        )
    finally:
        handle.remove()
    (patch_scores,) = received  # (S,)
    unit = visual.spatial_merge_size**2
    merged = patch_scores.view(-1, unit).mean(dim=-1)  # (S / 4,) in block order
    if hasattr(visual, "window_size"):  # Qwen2.5-VL: blocks run in window order
        window_index, _ = get_vision_window_index(
            video_grid_thw,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        merged = merged[torch.argsort(window_index.to(merged.device))]
    sizes = (video_grid_thw.prod(-1) // unit).tolist()
    return TowerOutput(output=output, scores=list(merged.cpu().split(sizes)))


def select(
    scores: torch.Tensor, features: torch.Tensor, keep: int, contextual_share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of a row's N merged tokens reach the language model, and how they are built.

    scores (N,), features (N, D), keep ≤ N. Returns kept (n,) sorted token indices and
    groups (N,) long: the kept slot each token's feature is averaged into (-1: dropped); a dominant
    token's group holds only itself. With keep ≥ N every token is kept as it is.
    """
    n_tokens = len(scores)
    groups = torch.full((n_tokens,), -1, dtype=torch.long)
    if keep >= n_tokens:
        kept = torch.arange(n_tokens)
        groups[:] = kept
        return kept, groups
    contextual = min(round(contextual_share * keep), keep, n_tokens - keep)
    dominant = torch.topk(scores, keep - contextual, sorted=False).indices
    rest = torch.ones(n_tokens, dtype=torch.bool)
    rest[dominant] = False
    remaining = torch.nonzero(rest).flatten()  # (N - d,) in sequence order
    if contextual:
        pick = torch.linspace(0, len(remaining) - 1, contextual).round().long()
        targets = remaining[pick]
        kept = torch.cat([dominant, targets]).sort().values
    else:
        targets = remaining[:0]
        kept = dominant.sort().values
    slot = torch.full((n_tokens,), -1, dtype=torch.long)
    slot[kept] = torch.arange(len(kept))
    groups[kept] = slot[kept]
    if contextual:
        others = remaining[~torch.isin(remaining, targets)]
        if len(others):
            unit = torch.nn.functional.normalize(features.float(), dim=-1)
            nearest = (unit[others] @ unit[targets].T).argmax(dim=-1)  # (M,) index into targets
            groups[others] = slot[targets[nearest]]
    return kept, groups


def gather(features: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """(N, D) features → (count, D): the mean of each kept slot's group."""
    mask = (groups >= 0).to(features.device)
    index = groups.to(features.device)[mask]
    out = torch.zeros(count, features.shape[-1], dtype=torch.float32, device=features.device)
    out.index_add_(0, index, features[mask].float())
    sizes = torch.zeros(count, device=features.device).index_add_(
        0, index, torch.ones(len(index), device=features.device)
    )
    return (out / sizes[:, None]).to(features.dtype)


@dataclass
class Pruned:
    """A batch's language-model inputs after pruning, and what was kept."""

    inputs: dict
    """input_ids / attention_mask / mm_token_type_ids (B, L'), position_ids (4, B, L') and
    ``mm_encoder_outputs``: ready for ``model(**inputs)`` or ``model.generate(**inputs)``."""
    kept_per_chunk: list[list[int]]
    """Per row, the kept visual tokens of each chunk (contextual tokens count where their target
    sits)."""
    source: list[torch.Tensor]
    """Per row (n_b,): the position in the unpruned row of each of its kept tokens, in order (the
    pruned row holds them after its left padding)."""


def rope_positions(model, inputs: BatchFeature) -> torch.Tensor:
    """(4, B, L) position ids of the unpruned inputs: the prepared ones (Qwen2.5-VL), else the
    model's own rope index (Qwen3-VL) under a row of plain cache positions."""
    if "position_ids" in inputs:
        return inputs["position_ids"]
    mask = inputs["attention_mask"]
    rope, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=mask,
    )
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, L)
    return torch.cat([text[None], rope.to(text.device)], dim=0)


@torch.no_grad()
def prune(
    model,
    inputs: BatchFeature,
    chunks_per_row: list[int],
    keep: list[int],
    contextual_share: float = CONTEXTUAL_SHARE,
    tower: TowerOutput | None = None,
    pad_token_id: int = 0,
) -> Pruned:
    """Encode ``inputs`` (B left-padded rows; row b has ``chunks_per_row[b]`` chunk items) and keep
    ``keep[b]`` visual tokens of row b (all of them when it is at least the row's count)."""
    tower = tower or encode(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
    features = tower.output.pooler_output  # per item (n_k, D)
    deepstack = getattr(tower.output, "deepstack_features", None)  # per layer, per item
    video_id = model.config.video_token_id
    positions = rope_positions(model, inputs)  # (4, B, L)
    rows, kept_feats, kept_deep, kept_per_chunk = [], [], [[] for _ in deepstack or []], []
    first = 0
    for b, k in enumerate(chunks_per_row):
        items = range(first, first + k)
        first += k
        counts = [len(tower.scores[i]) for i in items]
        scores = torch.cat([tower.scores[i] for i in items])  # (N,)
        feats = torch.cat([features[i] for i in items])  # (N, D)
        kept, groups = select(scores, feats.cpu(), keep[b], contextual_share)
        kept_feats.append(gather(feats, groups, len(kept)))
        for layer, per_item in enumerate(deepstack or []):
            kept_deep[layer].append(
                gather(torch.cat([per_item[i] for i in items]), groups, len(kept))
            )
        owner = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))  # (N,)
        kept_per_chunk.append(torch.bincount(owner[kept], minlength=k).tolist())
        real = inputs["attention_mask"][b].bool()
        is_video = inputs["input_ids"][b] == video_id
        video_at = torch.nonzero(is_video).flatten()  # (N,) sequence positions
        assert len(video_at) == len(scores), "every chunk's tokens must be in the prompt"
        stay = real & ~is_video
        stay[video_at[kept.to(video_at.device)]] = True
        rows.append(stay)
    length = max(int(s.sum()) for s in rows)
    batch = len(rows)
    device = inputs["input_ids"].device
    input_ids = torch.full((batch, length), pad_token_id, device=device)
    types = torch.zeros(batch, length, dtype=inputs["mm_token_type_ids"].dtype, device=device)
    mask = torch.zeros(batch, length, dtype=inputs["attention_mask"].dtype, device=device)
    pos = torch.zeros(4, batch, length, dtype=positions.dtype, device=positions.device)
    for b, stay in enumerate(rows):
        n = int(stay.sum())
        input_ids[b, length - n :] = inputs["input_ids"][b, stay]
        types[b, length - n :] = inputs["mm_token_type_ids"][b, stay]
        mask[b, length - n :] = 1
        pos[1:, b, length - n :] = positions[1:, b, stay.to(positions.device)]
        pos[0, b, length - n :] = torch.arange(n, device=positions.device)
    encoder = copy.copy(tower.output)
    encoder.pooler_output = (torch.cat(kept_feats),)
    if deepstack is not None:
        encoder.deepstack_features = [(torch.cat(layer),) for layer in kept_deep]
    encoder.last_hidden_state = None
    return Pruned(
        inputs={
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": types,
            "position_ids": pos,
            "mm_encoder_outputs": {"video": encoder},
        },
        kept_per_chunk=kept_per_chunk,
        source=[torch.nonzero(stay).flatten().cpu() for stay in rows],
    )
