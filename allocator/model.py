"""The allocator network: thumbnails (or the probe pass) + question → one Beta(α, β) over the
scale of every chunk.

Owns the assembly — time embedding, question encoder, query detector, mixer, Beta head — and its
save/load (``model.safetensors`` + ``config.json`` through huggingface_hub's
PyTorchModelHubMixin). Knows nothing about video decoding, token geometry, the
backbone's answers or the training objective; the chunk readers live in allocator.encoders.

Shape legend: B videos, K chunks, F frames per chunk, S thumbnail side, L query tokens,
D hidden width, E query-embedding width, H pretrained-tower width; the probe's A = rows × layers ×
heads attention features, R layers read, W the probe VLM's hidden width.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from torch import nn

from allocator.card import MODEL_CARD
from allocator.config import PROBE_ROWS, AllocatorConfig
from allocator.encoders import (
    MATCH_FLOOR,
    ChunkPool,
    ConvThumbEncoder,
    PretrainedThumbEncoder,
    ProbeEncoder,
)

TOWER_PREFIX = "thumb_encoder.tower."
"""State-dict prefix of the frozen pretrained tower: loaded from its own source, never saved."""


@dataclass
class AllocatorOutput:
    """What one forward pass returns."""

    alpha: torch.Tensor
    """(B, K) first Beta parameter of every chunk, >= 1."""
    beta: torch.Tensor
    """(B, K) second Beta parameter of every chunk, >= 1."""
    features: torch.Tensor
    """(B, K, D) per-chunk thumbnail features before mixing (zero on padding chunks); the
    temporal-similarity regulariser compares neighbours with them."""
    match_log_share: torch.Tensor | None = None
    """(B, K) the query detector's log-softmax over each video's chunks (0 on padding), None
    without the detector; training can distil the backbone's attention into it."""


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = y, for y > 0."""
    return y + math.log(-math.expm1(-y))


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of each chunk's normalised position in its video, then a linear map.

    Mid-times of the valid chunks are normalised to [0, 1] per video (first valid chunk 0, last 1)
    and stretched to positions in [0, max_chunks - 1]; padding chunks get position 0.
    """

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        half = config.hidden_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)  # (D/2,)
        self.register_buffer("freqs", freqs, persistent=False)
        self.max_position = config.max_chunks - 1
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)

    def forward(self, chunk_times: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """chunk_times (B, K) seconds, chunk_mask (B, K) → (B, K, D)."""
        t = chunk_times.float()
        t_min = t.masked_fill(~chunk_mask, math.inf).amin(dim=1, keepdim=True)  # (B, 1)
        t_max = t.masked_fill(~chunk_mask, -math.inf).amax(dim=1, keepdim=True)  # (B, 1)
        span = (t_max - t_min).clamp_min(1e-6)
        position = ((t - t_min) / span).clamp(0, 1) * self.max_position  # (B, K)
        position = position.masked_fill(~chunk_mask, 0.0)
        angles = position[..., None] * self.freqs  # (B, K, D/2)
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, K, D)
        return self.proj(emb.to(self.proj.weight.dtype))


def _attention_layer(config: AllocatorConfig, *, cross: bool) -> nn.Module:
    cls = nn.TransformerDecoderLayer if cross else nn.TransformerEncoderLayer
    return cls(
        d_model=config.hidden_dim,
        nhead=config.num_heads,
        dim_feedforward=config.mlp_ratio * config.hidden_dim,
        dropout=config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


class QueryEncoder(nn.Module):
    """Question token ids → contextual token features, with a learned "no question" token first
    (always attendable, so chunks never attend to an empty set)."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        self.mode = config.query_encoder
        self.embed_dim = config.query_embed_dim
        self.vocab_size = config.vocab_size
        self.fold_ids = config.query_id_folding
        """Fold ids at or above vocab_size as ``id % vocab_size``; off: refuse them (see
        AllocatorConfig.query_id_folding; resadapt may turn it on, loudly, for a mismatched
        backbone)."""
        if self.mode == "learned":
            self.table = nn.Embedding(config.vocab_size, config.query_embed_dim)
        # "backbone": the frozen (V, E) input-embedding matrix, set at run time, never saved.
        self.register_buffer("backbone_embeddings", None, persistent=False)
        self.norm = nn.LayerNorm(config.query_embed_dim)
        self.proj = nn.Linear(config.query_embed_dim, config.hidden_dim)
        self.position = nn.Embedding(config.max_query_tokens, config.hidden_dim)
        self.null_token = nn.Parameter(torch.zeros(1, 1, config.hidden_dim))
        nn.init.normal_(self.null_token, std=0.02)
        self.layers = nn.ModuleList(
            _attention_layer(config, cross=False) for _ in range(config.query_layers)
        )

    def set_backbone_embeddings(self, weight: torch.Tensor) -> None:
        if self.mode != "backbone":
            raise ValueError(
                'set_query_embeddings is only for query_encoder="backbone"; this allocator learns '
                "its own query embeddings"
            )
        if weight.ndim != 2 or weight.shape[1] != self.embed_dim:
            raise ValueError(
                f"backbone input embeddings have shape {tuple(weight.shape)}; expected (vocab, "
                f"{self.embed_dim}) — set query_embed_dim to the backbone's hidden size"
            )
        self.backbone_embeddings = weight.detach()

    def forward(
        self, query_ids: torch.Tensor, query_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query_ids (B, L), query_mask (B, L) → tokens (B, 1+L, D), keep mask (B, 1+L)."""
        ids = query_ids.masked_fill(~query_mask, 0)  # (B, L) padding ids may be anything
        if self.mode == "learned":
            if not self.fold_ids and ids.numel() and int(ids.max()) >= self.vocab_size:
                raise ValueError(
                    f"query token id {int(ids.max())} is outside the allocator's "
                    f"{self.vocab_size}-row query table; use the tokenizer it was trained with, or "
                    "set query_id_folding to fold ids (hashing)"
                )
            emb = self.table(ids % self.vocab_size)  # (B, L, E)
        else:
            if self.backbone_embeddings is None:
                raise RuntimeError(
                    'query_encoder="backbone" needs the frozen matrix first: call '
                    "allocator.set_query_embeddings(backbone.get_input_embeddings().weight)"
                )
            rows = self.backbone_embeddings.shape[0]
            if ids.numel() and int(ids.max()) >= rows:
                raise ValueError(
                    f"query token id {int(ids.max())} is outside the backbone's {rows} input "
                    "embeddings; tokenize the question with that backbone's tokenizer"
                )
            emb = F.embedding(ids, self.backbone_embeddings).to(self.proj.weight.dtype)  # (B, L, E)
        b, length = ids.shape
        positions = torch.arange(length, device=ids.device)  # (L,)
        x = self.proj(self.norm(emb)) + self.position(positions)  # (B, L, D)
        x = torch.cat([self.null_token.expand(b, 1, -1), x], dim=1)  # (B, 1+L, D)
        keep = torch.cat([query_mask.new_ones(b, 1), query_mask], dim=1)  # (B, 1+L)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~keep)
        return x, keep


class QueryMatch(nn.Module):
    """Query-conditioned detector: how strongly each chunk shows what the question names.

    The question's token states are attention-pooled (one learned weight per token state, so the
    words that vary between questions — "green" — can outweigh the template around them) and
    projected to a filter q (D); every position of every frame's spatial map is projected to a
    key (D); the chunk's score is the largest scaled dot product over its frames and positions —
    an open-vocabulary detector in miniature, so one small object can carry the chunk. The chunks
    of a video then compete: the output is log softmax(score) over its K valid chunks — the log
    share of the question's attention each chunk gets; the allocator uses log(K · share), clamped
    below at ``MATCH_FLOOR``, how many times more than an even share the question points at the
    chunk. Raising one chunk's share lowers the others' in proportion to their shares (the
    chunks that look alike), as a classifier's softmax does, rather than all chunks equally.
    Exactly 0 everywhere at initialisation (a zero filter), so every Beta starts at
    init_mean_scale.
    """

    def __init__(self, config: AllocatorConfig, map_dim: int) -> None:
        super().__init__()
        d = config.hidden_dim
        self.query_norm = nn.LayerNorm(d)
        self.query_weight = nn.Linear(d, 1)
        nn.init.zeros_(self.query_weight.weight)  # starts as the mean over the question's tokens
        nn.init.zeros_(self.query_weight.bias)
        self.query_proj = nn.Linear(d, d)
        # A zero filter: every chunk gets an even share (ratio 0) until training gives the
        # detector something to look for, so the match gain cannot amplify random responses.
        nn.init.zeros_(self.query_proj.weight)
        nn.init.zeros_(self.query_proj.bias)
        self.key = nn.Linear(map_dim, d)
        self.frames_per_chunk = config.frames_per_chunk

    def forward(
        self,
        spatial: torch.Tensor,
        query: torch.Tensor,
        query_keep: torch.Tensor,
        chunk_mask: torch.Tensor,
    ) -> torch.Tensor:
        """spatial (N*F, P, C) maps of the N valid chunks' frames, query (B, 1+L, D), query_keep
        (B, 1+L), chunk_mask (B, K) → log shares (B, K), 0 on padding chunks."""
        b, k = chunk_mask.shape
        tokens = self.query_norm(query)  # (B, 1+L, D)
        logits = self.query_weight(tokens).squeeze(-1).masked_fill(~query_keep, -math.inf)
        weights = logits.softmax(dim=1)  # (B, 1+L) which words name the target
        q = self.query_proj(torch.einsum("bl,bld->bd", weights, tokens))  # (B, D)
        video = torch.arange(b, device=chunk_mask.device).repeat_interleave(k)[chunk_mask.view(-1)]
        keys = self.key(spatial)  # (N*F, P, D)
        keys = keys.reshape(-1, self.frames_per_chunk * keys.shape[1], keys.shape[2])  # (N, F*P, D)
        response = torch.einsum("nqd,nd->nq", keys, q[video]) / math.sqrt(keys.shape[-1])
        best = response.amax(dim=1)  # (N,) best over the chunk's frames and positions
        score = best.new_zeros(b * k)
        score[chunk_mask.view(-1)] = best
        score = score.view(b, k).masked_fill(~chunk_mask, -math.inf)  # (B, K)
        return score.log_softmax(dim=1).masked_fill(~chunk_mask, 0.0)  # (B, K)


class BetaHead(nn.Module):
    """Chunk state → (α, β) = softplus(0.5 z) + 1: every Beta is unimodal or flat (docs/capo.md)."""

    def __init__(self, config: AllocatorConfig) -> None:
        super().__init__()
        d = config.hidden_dim
        self.net = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 2)
        )
        # Initial mean action m = (init_mean_scale - s_min) / (s_max - s_min); the smaller shape
        # parameter is init_min_shape and the other follows from α / (α + β) = m.
        m = (config.init_mean_scale - config.scale_min) / (config.scale_max - config.scale_min)
        k = config.init_min_shape
        alpha0, beta0 = (k, k * (1 - m) / m) if m <= 0.5 else (k * m / (1 - m), k)
        last = self.net[-1]
        # The probe head starts exactly uniform: every chunk's Beta is the bias's.
        nn.init.normal_(last.weight, std=0.0 if config.thumb_encoder == "probe" else 1e-2)
        with torch.no_grad():
            last.bias.copy_(
                torch.tensor([2 * _softplus_inverse(alpha0 - 1), 2 * _softplus_inverse(beta0 - 1)])
            )

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, D), optional bias (B, K) added to α's logit and taken from β's (a positive
        bias raises the mean) → alpha (B, K), beta (B, K)."""
        z = self.net(x)  # (B, K, 2)
        if bias is not None:
            z = z + torch.stack([bias, -bias], dim=-1)  # (B, K, 2)
        ab = F.softplus(0.5 * z) + 1.0  # (B, K, 2)
        return ab[..., 0], ab[..., 1]


class Allocator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="resadapt",
    tags=["video-qa", "resolution-allocation"],
    model_card_template=MODEL_CARD,
):
    """Query-aware allocator: per chunk, a Beta over the action a ∈ (0, 1) (scale = s_min + a Δs).

    thumbnails → frame encoder → chunk pool (+ frame change) → features (B, K, D)
    → + time embedding + embedded query-match score
    → [self-attention over chunks, cross-attention to the question, MLP] × N
    → Beta head (its logits biased by the match score).
    Save with ``save_pretrained(folder)``; load with ``Allocator.from_pretrained(folder)``.
    """

    def __init__(self, config: AllocatorConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = AllocatorConfig()
        elif isinstance(config, dict):  # from config.json
            config = AllocatorConfig.from_dict(config)
        self.config = config
        self.time_embedding = TimeEmbedding(config)
        if config.thumb_encoder == "probe":  # the question's state comes from the probe pass
            self.thumb_encoder: nn.Module = ProbeEncoder(config)
        else:
            if config.thumb_encoder == "conv":
                self.thumb_encoder = ConvThumbEncoder(config)
            else:
                self.thumb_encoder = PretrainedThumbEncoder(config)
            self.chunk_pool = ChunkPool(config)
            self.query_encoder = QueryEncoder(config)
        if config.query_match:
            self.query_match = QueryMatch(config, self.thumb_encoder.map_dim)
            self.match_embed = nn.Linear(1, config.hidden_dim)
            self.match_gain = nn.Parameter(torch.tensor(float(config.match_gain)))
        self.mixer = nn.ModuleList(
            _attention_layer(config, cross=True) for _ in range(config.num_layers)
        )
        self.mixer_norm = nn.LayerNorm(config.hidden_dim)
        self.head = BetaHead(config)

    # ----------------------------------------------------------------------------------------
    # run-time inputs

    def set_query_embeddings(self, weight: torch.Tensor) -> None:
        """Supply the frozen backbone input-embedding matrix (V, query_embed_dim) for
        query_encoder="backbone". It is shared, not copied, and not saved with the allocator."""
        self.query_encoder.set_backbone_embeddings(weight)

    def _check_inputs(
        self,
        thumbs: torch.Tensor,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        chunk_mask: torch.Tensor,
        chunk_times: torch.Tensor,
    ) -> None:
        c = self.config
        expected = (c.frames_per_chunk, 3, c.thumb_side, c.thumb_side)
        if thumbs.ndim != 6 or tuple(thumbs.shape[2:]) != expected:
            raise ValueError(
                f"thumbs must be (B, K, {', '.join(map(str, expected))}), got {tuple(thumbs.shape)}"
            )
        b, k = thumbs.shape[:2]
        if k > c.max_chunks:
            raise ValueError(f"{k} chunks exceed max_chunks={c.max_chunks}; sample fewer frames")
        for name, t in (("chunk_mask", chunk_mask), ("chunk_times", chunk_times)):
            if tuple(t.shape) != (b, k):
                raise ValueError(f"{name} must be (B, K) = ({b}, {k}), got {tuple(t.shape)}")
        if query_ids.ndim != 2 or query_ids.shape[0] != b or query_mask.shape != query_ids.shape:
            raise ValueError(
                f"query_ids and query_mask must both be (B={b}, L), got {tuple(query_ids.shape)} "
                f"and {tuple(query_mask.shape)}"
            )
        if query_ids.shape[1] > c.max_query_tokens:
            raise ValueError(
                f"the question has {query_ids.shape[1]} tokens; max_query_tokens is "
                f"{c.max_query_tokens} (truncate it)"
            )
        if chunk_mask.dtype != torch.bool or query_mask.dtype != torch.bool:
            raise ValueError("chunk_mask and query_mask must be bool tensors")
        if not bool(chunk_mask.any(dim=1).all()):
            raise ValueError("every video needs at least one valid chunk (chunk_mask all False)")

    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        thumbs: torch.Tensor,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        chunk_mask: torch.Tensor,
        chunk_times: torch.Tensor,
        probe_attention: torch.Tensor | None = None,
        probe_hidden: torch.Tensor | None = None,
        probe_query: torch.Tensor | None = None,
    ) -> AllocatorOutput:
        """thumbs (B, K, F, 3, S, S) in [0, 1]; query_ids (B, L) long; query_mask (B, L) bool;
        chunk_mask (B, K) bool (padding False); chunk_times (B, K) chunk mid-times in seconds.
        thumb_encoder="probe" reads the probe pass instead of the thumbnails and the question's
        ids: probe_attention (B, K, A), probe_hidden (B, K, R, W), probe_query (B, R, W)."""
        self._check_inputs(thumbs, query_ids, query_mask, chunk_mask, chunk_times)
        if self.config.thumb_encoder == "probe":
            return self._probe_forward(
                chunk_mask, chunk_times, probe_attention, probe_hidden, probe_query
            )
        b, k = chunk_mask.shape
        dtype = self.head.net[1].weight.dtype
        # Only valid chunks are encoded: padding pixels can neither leak nor cost time.
        valid = chunk_mask.reshape(-1)  # (B*K,)
        frames = thumbs.reshape(b * k, *thumbs.shape[2:])[valid].to(dtype)  # (N, F, 3, S, S)
        frame_features, spatial = self.thumb_encoder(frames)  # (N, F, D), (N*F, P, C)
        pooled = self.chunk_pool(frame_features)  # (N, D)
        features = pooled.new_zeros(b * k, pooled.shape[-1])  # (B*K, D)
        features[valid] = pooled
        features = features.reshape(b, k, -1)  # (B, K, D)

        x = features + self.time_embedding(chunk_times, chunk_mask)  # (B, K, D)
        query, query_keep = self.query_encoder(query_ids, query_mask)  # (B, 1+L, D), (B, 1+L)
        bias = log_share = None
        if self.config.query_match:
            log_share = self.query_match(spatial, query, query_keep, chunk_mask)  # (B, K)
            count = chunk_mask.sum(dim=1, keepdim=True).to(log_share.dtype)  # (B, 1)
            match = (log_share + count.log()).clamp_min(MATCH_FLOOR).masked_fill(~chunk_mask, 0.0)
            x = x + self.match_embed(match[..., None])  # (B, K, D)
            bias = self.match_gain * match  # (B, K)
        for layer in self.mixer:
            x = layer(
                x,
                query,
                tgt_key_padding_mask=~chunk_mask,
                memory_key_padding_mask=~query_keep,
            )  # (B, K, D)
        alpha, beta = self.head(self.mixer_norm(x), bias)  # (B, K), (B, K)
        return AllocatorOutput(alpha=alpha, beta=beta, features=features, match_log_share=log_share)

    def _probe_forward(
        self,
        chunk_mask: torch.Tensor,
        chunk_times: torch.Tensor,
        attention: torch.Tensor | None,
        hidden: torch.Tensor | None,
        query: torch.Tensor | None,
    ) -> AllocatorOutput:
        """The probe head: probe features → chunk features, mixer (reading the question's state
        from the same pass) → Beta head biased by the attention read-out."""
        c = self.config
        b, k = chunk_mask.shape
        a = PROBE_ROWS * c.probe_layers * c.probe_heads
        expected = {
            "probe_attention": (attention, (b, k, a)),
            "probe_hidden": (hidden, (b, k, c.probe_layers, c.probe_hidden_size)),
            "probe_query": (query, (b, c.probe_layers, c.probe_hidden_size)),
        }
        for name, (t, shape) in expected.items():
            if t is None or tuple(t.shape) != shape:
                got = None if t is None else tuple(t.shape)
                raise ValueError(f"{name} must be {shape} for this probe head, got {got}")
        features, bias, asked = self.thumb_encoder(attention, hidden, query, chunk_mask)
        x = features + self.time_embedding(chunk_times, chunk_mask)  # (B, K, D)
        keep = chunk_mask.new_ones(b, 1)  # (B, 1)
        for layer in self.mixer:
            x = layer(x, asked, tgt_key_padding_mask=~chunk_mask, memory_key_padding_mask=~keep)
        alpha, beta = self.head(self.mixer_norm(x), bias)  # (B, K), (B, K)
        return AllocatorOutput(alpha=alpha, beta=beta, features=features)

    # ----------------------------------------------------------------------------------------
    # save / load: the frozen tower and backbone embeddings come from their own sources

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State to save: everything except the frozen pretrained tower."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith(TOWER_PREFIX)
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``trainable_state_dict`` output strictly (only the frozen tower may be absent)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.startswith(TOWER_PREFIX)]
        if missing or unexpected:
            raise ValueError(
                f"allocator checkpoint does not match its config: missing {missing}, unexpected "
                f"{unexpected}; save and load with the same allocator version"
            )

    def _save_pretrained(self, save_directory) -> None:
        """Weights, and ``config.json`` from ``self.config`` (so a config stamped after
        construction is what is saved); the mixin then writes the model card
        (:meth:`generate_model_card`)."""
        path = os.path.join(save_directory, constants.SAFETENSORS_SINGLE_FILE)
        safetensors.torch.save_file(self.trainable_state_dict(), path, metadata={"format": "pt"})
        config = json.dumps(self.config.to_dict(), sort_keys=True, indent=2)
        Path(save_directory, constants.CONFIG_NAME).write_text(config)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The model card: :data:`MODEL_CARD` filled from the config; ``save_pretrained(folder,
        model_card_kwargs={"train_command": ..., "validation": {...}})`` adds those sections."""
        return super().generate_model_card(*args, config=self.config, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        **model_kwargs: Any,
    ) -> Allocator:
        if os.path.isdir(model_id):
            path = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{model_id!r} holds no {constants.SAFETENSORS_SINGLE_FILE}; point to a folder "
                    "written by Allocator.save_pretrained"
                )
        else:
            path = hf_hub_download(
                repo_id=model_id,
                filename=constants.SAFETENSORS_SINGLE_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        model = cls(**model_kwargs)
        model.load_trainable_state_dict(safetensors.torch.load_file(path, device=str(map_location)))
        model.eval()
        return model
