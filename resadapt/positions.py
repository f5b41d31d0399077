"""Qwen2.5-VL's 3-D rope positions for a video passed as K chunk items, one per temporal patch.

Owns the position arithmetic that keeps each chunk at its native temporal position (transformers'
stock rope index restarts per video item), for a batch of prepared rows and for one prompt as a
serving engine lists its items (the vLLM plugin's view). Knows nothing about processors, models or
sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def chunked_position_ids(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    video_grid_thw: torch.Tensor,
    chunk_offsets: list[torch.Tensor],
    time_intervals: torch.Tensor,
    spatial_merge_size: int,
) -> torch.Tensor:
    """Qwen2.5-VL 3-D rope positions for rows whose video tokens are K chunk items in a row.

    input_ids, mm_token_type_ids, attention_mask: (B, L); video_grid_thw: (sum_b K_b, 3) with
    t = 1 per chunk; chunk_offsets[b]: (K_b,) offset of chunk k from the row's first chunk, in units
    of one temporal patch (``(t_k - t_0) / second_per_grid``: exactly k at a constant frame rate);
    time_intervals: (B,) float32 ``tokens_per_second * second_per_grid``. (The origin is the
    first chunk, or the first sampled frame when chunks before it were dropped.)
    Returns (4, B, L): row 0 the plain text positions (for the attention mask), rows 1–3 the
    temporal / height / width positions. A chunk's temporal position is
    ``start + floor(offset_k * time_interval)`` in float32, the native path's arithmetic; text after
    the video continues from ``start + max(h, w) // merge`` of the largest chunk, as natively.
    """
    batch, length = input_ids.shape
    pos = torch.zeros(4, batch, length, dtype=torch.long)
    grids = iter(video_grid_thw.tolist())
    for b in range(batch):
        keep = attention_mask[b].bool()
        types = mm_token_type_ids[b][keep].tolist()
        offsets = iter(chunk_offsets[b].float())
        rows: list[torch.Tensor] = []
        cur = 0
        i = 0
        while i < len(types):
            j = i
            while j < len(types) and types[j] == types[i]:
                j += 1
            if types[i] == 0:
                rows.append(torch.arange(cur, cur + j - i).expand(3, -1))
                cur += j - i
            else:
                assert types[i] == 2, "only video placeholders are supported"
                n, advance = 0, 0
                while n < j - i:
                    t, h, w = next(grids)
                    assert t == 1, "each chunk is one temporal patch"
                    gh, gw = h // spatial_merge_size, w // spatial_merge_size
                    t_pos = int((next(offsets) * time_intervals[b]).long())
                    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
                    rows.append(
                        torch.stack(
                            [
                                torch.full((gh * gw,), cur + t_pos),
                                hh.flatten() + cur,
                                ww.flatten() + cur,
                            ]
                        )
                    )
                    n += gh * gw
                    advance = max(advance, max(h, w) // spatial_merge_size)
                assert n == j - i, "video tokens do not match the chunk grids"
                cur += advance
            i = j
        positions = torch.cat(rows, dim=1)  # (3, L_b)
        pos[1:, b, keep] = positions
        pos[0, b, keep] = torch.arange(int(keep.sum()))
    return pos


@dataclass(frozen=True)
class ChunkItem:
    """One video item of a prompt as a serving engine sees it (vLLM's ``mm_features``)."""

    offset: int
    """Index of the item's first placeholder token in the prompt."""
    grid: tuple[int, int, int]
    """(t, h, w) in patches, before the spatial merge."""
    second_per_grid: float
    """Seconds from this chunk's first frame to the next chunk's of the same video (the last chunk
    of a video: the clip's own interval, frames per chunk / sampling fps)."""


def item_position_ids(
    num_tokens: int,
    items: list[ChunkItem],
    tokens_per_second: float,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, int] | None:
    """:func:`chunked_position_ids` for one prompt of ``num_tokens`` tokens whose multimodal items
    are ``items`` (any order): returns ((3, L) positions, delta = max position + 1 - L).

    Items whose placeholders touch form one video (its chunks); a chunk's offset from the video's
    first chunk is the sum of the earlier chunks' ``second_per_grid`` in units of the last chunk's
    (exactly k at a constant frame rate, the gap for dropped chunks). Returns None when the items
    are not all one-patch chunks of videos that share one interval (fewer than two items, an item
    with t > 1): the engine's stock positions then apply.
    """
    items = sorted(items, key=lambda item: item.offset)
    if len(items) < 2 or any(item.grid[0] != 1 for item in items):
        return None
    merge2 = spatial_merge_size**2
    lengths = [item.grid[1] * item.grid[2] // merge2 for item in items]
    runs: list[list[int]] = [[0]]
    for i in range(1, len(items)):
        touching = items[i].offset == items[i - 1].offset + lengths[i - 1]
        if touching:
            runs[-1].append(i)
        else:
            runs.append([i])
    intervals = {items[run[-1]].second_per_grid for run in runs}
    if len(intervals) != 1:
        return None
    second = intervals.pop()
    offsets = []
    for run in runs:
        seconds = np.array([items[i].second_per_grid for i in run], dtype=np.float64)
        offsets.extend(np.round(np.concatenate([[0.0], np.cumsum(seconds[:-1])]) / second, 3))
    types = torch.zeros(1, num_tokens, dtype=torch.long)
    for item, n in zip(items, lengths, strict=True):
        types[0, item.offset : item.offset + n] = 2
    pos = chunked_position_ids(
        torch.zeros(1, num_tokens, dtype=torch.long),
        types,
        torch.ones(1, num_tokens, dtype=torch.long),
        torch.tensor([item.grid for item in items]),
        [torch.tensor(offsets)],
        tokens_per_second * torch.tensor([second], dtype=torch.float32),
        spatial_merge_size,
    )[1:, 0]  # (3, L)
    return pos, int(pos.max()) + 1 - num_tokens
