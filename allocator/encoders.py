"""What reads a chunk for the allocator: thumbnails through a small CNN or a frozen pretrained
tower (each frame → a feature and a spatial map, pooled per chunk), or the frozen VLM's own
low-resolution probe pass (attention shares per layer × head and pooled hidden states).

Owns the chunk readers. Knows nothing about how the allocator mixes chunks, reads the question
or turns features into Beta parameters (allocator.model), nor about how the probe pass is run
(resadapt.probe).

Shape legend as in allocator.model: N valid chunks, F frames per chunk, S thumbnail side, D hidden
width, H pretrained-tower width, P map positions, C map channels; B videos, K chunks, A = rows ×
layers × heads attention features, R layers read, W the probe VLM's hidden width.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from allocator.config import PROBE_ROWS, AllocatorConfig

logger = logging.getLogger(__name__)

MATCH_FLOOR = -4.0
"""Lowest log share ratio of the query match (a chunk with e^-4 ≈ 2 % of an even share): keeps the
bias, and its gradient, finite for chunks the question clearly does not point at."""


class ConvThumbEncoder(nn.Module):
    """Small CNN from scratch: each frame, with its deviation from the chunk's mean frame as three
    extra channels (motion inside the chunk is visible at the pixel level), → one feature."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        d = config.hidden_dim
        widths = (6, d // 8, d // 4, d // 2, d)
        stages: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):  # each stage halves the side
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                    nn.GroupNorm(math.gcd(8, c_out), c_out),
                    nn.GELU(),
                )
            )
        self.stages = nn.ModuleList(stages)
        self.match_stage = config.match_stage
        self.map_dim = widths[config.match_stage]
        """Channels C of the spatial map returned for the query detector."""
        self.proj = nn.Linear(2 * d, d)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (N, F, 3, S, S) in [0, 1] → features (N, F, D), map (N*F, P, C) where the map is
        stage ``match_stage``'s output, P = (S / 2**match_stage)² positions of C channels."""
        n, f = frames.shape[:2]
        deviation = frames - frames.mean(dim=1, keepdim=True)  # (N, F, 3, S, S)
        x = torch.cat([frames - 0.5, deviation], dim=2).flatten(0, 1)  # (N*F, 6, S, S)
        maps = []
        for stage in self.stages:
            x = stage(x)  # (N*F, C_i, S/2^i, S/2^i) at stage i
            maps.append(x)
        spatial = maps[self.match_stage - 1]  # (N*F, C, S/2^m, S/2^m)
        # Mean sees the overall content, max sees small high-detail regions.
        x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (N*F, 2D)
        return self.proj(x).reshape(n, f, -1), spatial.flatten(2).transpose(1, 2)


class PretrainedThumbEncoder(nn.Module):
    """A frozen pretrained vision tower (CLIP / SigLIP family via transformers' AutoModel); its
    token features are mean- and max-pooled and projected to D (the projection is trained)."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        from transformers import AutoModel  # heavy import, only for this variant

        try:
            model = AutoModel.from_pretrained(config.pretrained_vision, dtype=torch.float32)
        except OSError as e:
            raise ValueError(
                f"cannot load the pretrained vision tower {config.pretrained_vision!r}: {e}; give "
                'a local folder or reachable hub id, or use thumb_encoder="conv"'
            ) from e
        self.tower = getattr(model, "vision_model", model)  # full CLIP/SigLIP → its vision half
        tower_config = self.tower.config
        for name in ("image_size", "hidden_size"):
            if not hasattr(tower_config, name):
                raise ValueError(
                    f"{config.pretrained_vision!r} has no {name} in its config; use a CLIP or "
                    "SigLIP vision tower"
                )
        self.image_size = int(tower_config.image_size)
        self.tower.requires_grad_(False)
        self.tower.eval()
        mean = torch.tensor(config.pretrained_image_mean).view(1, 3, 1, 1)
        std = torch.tensor(config.pretrained_image_std).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.proj = nn.Linear(2 * tower_config.hidden_size, config.hidden_dim)
        self.map_dim = int(tower_config.hidden_size)
        """Channels C of the token map returned for the query detector."""
        logger.info("allocator thumbnails encoded by frozen %s", config.pretrained_vision)

    def train(self, mode: bool = True) -> PretrainedThumbEncoder:
        super().train(mode)
        self.tower.eval()  # frozen: dropout and norms stay in inference mode
        return self

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (N, F, 3, S, S) in [0, 1] → features (N, F, D), token map (N*F, P, H)."""
        n, f = frames.shape[:2]
        x = frames.flatten(0, 1).float()  # (N*F, 3, S, S)
        size = (self.image_size, self.image_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x - self.pixel_mean) / self.pixel_std  # (N*F, 3, I, I)
        with torch.no_grad():
            tokens = self.tower(pixel_values=x).last_hidden_state  # (N*F, P, H)
        pooled = torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1)  # (N*F, 2H)
        features = self.proj(pooled.to(self.proj.weight.dtype)).reshape(n, f, -1)  # (N, F, D)
        return features, tokens.to(self.proj.weight.dtype)


class ChunkPool(nn.Module):
    """The F frame features of a chunk → one chunk feature: their mean, plus the mean absolute
    change between consecutive frames (motion / novelty inside the chunk)."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * config.hidden_dim, config.hidden_dim)
        self.norm = nn.LayerNorm(config.hidden_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (N, F, D) → (N, D)."""
        if h.shape[1] > 1:
            change = (h[:, 1:] - h[:, :-1]).abs().mean(dim=1)  # (N, D)
        else:
            change = torch.zeros_like(h[:, 0])  # (N, D) a one-frame chunk has no change
        return self.norm(self.proj(torch.cat([h.mean(dim=1), change], dim=1)))  # (N, D)


class ProbeEncoder(nn.Module):
    """The probe head's reader: per chunk, the frozen VLM's attention shares per query row, layer
    and head (A of them) and its pooled hidden states at the R layers read → chunk features (B, K,
    D), a Beta-logit bias (B, K) and the question's state (B, 1, D) the mixer reads.

    Attention shares become log ratios to an even share, log(K · share), clamped below at
    ``MATCH_FLOOR``; a linear read-out of them, times a learned gain, is the bias (which layers and
    heads bind the question); they also enter the features, with the hidden states mixed over the
    R layers (softmax weights) and projected. The read-out starts at zero and the Beta head's last
    layer at zero weight: every chunk starts at the same Beta (uniform allocation).
    """

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        d, w = config.hidden_dim, config.probe_hidden_size
        self.num_features = PROBE_ROWS * config.probe_layers * config.probe_heads  # A
        self.readout = nn.Linear(self.num_features, 1, bias=False)
        nn.init.zeros_(self.readout.weight)
        self.gain = nn.Parameter(torch.tensor(float(config.probe_gain)))
        self.attention_proj = nn.Linear(self.num_features, d)
        self.layer_logits = nn.Parameter(torch.zeros(config.probe_layers))  # (R,)
        self.hidden_norm = nn.LayerNorm(w)
        self.hidden_proj = nn.Linear(w, d)
        self.query_proj = nn.Linear(w, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU())

    def forward(
        self,
        attention: torch.Tensor,
        hidden: torch.Tensor,
        query: torch.Tensor,
        chunk_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """attention (B, K, A) shares summing to 1 over each video's chunks per feature, hidden
        (B, K, R, W), query (B, R, W), chunk_mask (B, K) → features (B, K, D), bias (B, K),
        question state (B, 1, D)."""
        dtype = self.attention_proj.weight.dtype
        count = chunk_mask.sum(dim=1).to(dtype)[:, None, None]  # (B, 1, 1)
        ratio = (attention.to(dtype) * count).clamp_min(1e-12).log().clamp_min(MATCH_FLOOR)
        ratio = ratio.masked_fill(~chunk_mask[..., None], 0.0)  # (B, K, A)
        bias = self.gain * self.readout(ratio).squeeze(-1)  # (B, K)
        mix = self.layer_logits.softmax(dim=0)  # (R,)
        pooled = torch.einsum("bkrw,r->bkw", hidden.to(dtype), mix)  # (B, K, W)
        asked = torch.einsum("brw,r->bw", query.to(dtype), mix)  # (B, W)
        q = self.query_proj(self.hidden_norm(asked))  # (B, D)
        x = self.attention_proj(ratio) + self.hidden_proj(self.hidden_norm(pooled)) + q[:, None]
        features = self.mlp(x).masked_fill(~chunk_mask[..., None], 0.0)  # (B, K, D)
        return features, bias.masked_fill(~chunk_mask, 0.0), q[:, None]
