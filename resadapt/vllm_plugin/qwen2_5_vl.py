"""vLLM's Qwen2.5-VL with the chunk items of one video placed on one temporal axis.

Owns the override of ``get_mrope_input_positions``; the arithmetic is
:func:`resadapt.positions.item_position_ids`, the transformers path's own. Knows nothing about
requests or servers; prompts that are not chunked videos keep vLLM's stock positions.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

from resadapt.positions import ChunkItem, item_position_ids


class ChunkedQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL whose touching one-patch video items are the chunks of one video.

    Stock vLLM starts every video item at the previous item's largest position + 1 with its time
    index at 0; here chunk k sits at the video's start + its time offset (from the items'
    ``second_per_grid_ts``), exactly as :func:`resadapt.positions.chunked_position_ids` places it.
    """

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple:
        items = []
        for feature in mm_features:
            if feature.modality != "video":
                return super().get_mrope_input_positions(input_tokens, mm_features)
            data = feature.data
            seconds = data.get("second_per_grid_ts")
            items.append(
                ChunkItem(
                    offset=feature.mm_position.offset,
                    grid=tuple(data["video_grid_thw"].data.tolist()),
                    second_per_grid=float(seconds.data.item()) if seconds else 1.0,
                )
            )
        vision = self.config.vision_config
        placed = item_position_ids(
            len(input_tokens),
            items,
            getattr(vision, "tokens_per_second", 1.0),
            vision.spatial_merge_size,
        )
        if placed is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        positions, delta = placed
        return positions.to(torch.long), delta
