"""The allocator's configuration: one typed dataclass, saved as ``config.json`` next to weights.

Owns every architectural knob and its cross-field rules. Knows nothing about videos, backbones'
token geometry, or how the allocator is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCALE_MIN = 0.2
"""Smallest scale the policy can choose (the reference default; docs/capo.md)."""
SCALE_MAX = 1.0
"""Largest scale: frames are decoded at the backbone's pixel cap, so s > 1 adds nothing."""

QUERY_ENCODERS = ("learned", "backbone")
SIGNATURE_FIELDS = (
    "backbone_model_type",
    "backbone_patch_factor",
    "frames_per_chunk",
    "backbone_vocab_size",
    "backbone_vocab_sha256",
    "backbone_chat_template_sha256",
    "backbone_weights_sha256",
)
"""Config fields an allocator and a backbone must agree on (the backbone's side: its signature)."""
OPTIONAL_SIGNATURE_FIELDS = ("backbone_weights_sha256",)
"""Signature fields that allocators stamped before them lack: compared only where recorded."""
THUMB_ENCODERS = ("conv", "pretrained", "probe")
PROBE_ROWS = 2
"""Query rows of the probe features per layer and head: the positions after the video, and the
answer position."""


@dataclass
class AllocatorConfig:
    """Architecture of the allocator (letters: B videos, K chunks, F frames, L query tokens)."""

    thumb_side: int = 64
    """Side S of the square thumbnails (pixels) the allocator sees for every frame."""
    frames_per_chunk: int = 2
    """Frames F per temporal chunk: the backbone's temporal patch size (2 for Qwen-VL)."""
    hidden_dim: int = 256
    """Width D of chunk features, the mixer and the query encoder."""
    num_layers: int = 2
    """Mixer blocks; each mixes chunks (self-attention), reads the query, then applies an MLP."""
    num_heads: int = 4
    """Attention heads in every attention layer; must divide hidden_dim."""
    mlp_ratio: int = 2
    """Hidden width of every transformer MLP, as a multiple of hidden_dim."""
    max_chunks: int = 256
    """Most chunks K per video. Chunk times are normalised to [0, max_chunks - 1] positions for
    the sinusoidal time embedding; longer inputs are refused."""
    vocab_size: int = 16384
    """Rows of the learned query-embedding table (query_encoder="learned"). Set it to at least the
    backbone tokenizer's size for one row per token; token ids at or above it are refused unless
    query_id_folding is set."""
    query_id_folding: bool = False
    """Fold token ids at or above vocab_size into the table as ``id % vocab_size`` (hashing, so a
    small table serves a 150k-token tokenizer). Off: such an id is an error, never folded
    silently."""
    max_query_tokens: int = 64
    """Longest question, in backbone tokens (size of the learned query position embedding)."""
    query_layers: int = 1
    """Self-attention layers over the question tokens before the chunks read them."""
    query_encoder: str = "learned"
    """"learned": a trainable embedding table; "backbone": the frozen backbone's input
    embeddings, supplied at run time with ``Allocator.set_query_embeddings(weight)`` (never saved
    in the allocator checkpoint) and projected from query_embed_dim down to hidden_dim."""
    query_embed_dim: int = 64
    """Width of one query token embedding: the learned table's width, or, for "backbone", the
    backbone's hidden size (the width of its input-embedding matrix)."""
    thumb_encoder: str = "conv"
    """"conv": a small CNN trained from scratch; "pretrained": the frozen vision tower named by
    pretrained_vision (loaded with transformers' AutoModel; its weights are not saved in the
    allocator checkpoint)."""
    pretrained_vision: str = ""
    """Local folder or hub id of the frozen vision tower (CLIP / SigLIP family), used when
    thumb_encoder="pretrained"."""
    pretrained_image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel mean the pretrained tower expects (its preprocessor_config.json image_mean;
    SigLIP: 0.5, CLIP: 0.4815, 0.4578, 0.4082)."""
    pretrained_image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Per-channel std the pretrained tower expects (its image_std; SigLIP: 0.5, CLIP: 0.2686,
    0.2613, 0.2758)."""
    probe_layers: int = 0
    """thumb_encoder="probe": the deepest language-model layer the head reads (the probe pass runs
    only that deep); 0 for the other encoders."""
    probe_heads: int = 0
    """thumb_encoder="probe": attention heads per layer of the probe VLM."""
    probe_hidden_size: int = 0
    """thumb_encoder="probe": width of the probe VLM's hidden states."""
    probe_budget: float = 0.25
    """thumb_encoder="probe": visual tokens of the probe pass, as a share of the full-resolution
    tokens (every chunk at one low size)."""
    probe_gain: float = 8.0
    """thumb_encoder="probe": initial gain on the head's read-out of the attention log ratios (the
    read-out starts at zero, so the first allocations are uniform whatever the gain)."""
    fills_budget: bool = True
    """Whether the fit raises the allocation to use the budget (True) or treats the budget as a
    ceiling only (False: the probe head, which may know that a smaller spend answers better)."""
    probe_backbone: str | None = None
    """Name or path of the probe VLM when it is not the backbone itself (a smaller checkpoint of
    the same family); None: the backbone."""
    probe_weights_sha256: str | None = None
    """Fingerprint of the probe VLM's weights (as ``backbone_weights_sha256``), None: the backbone
    or not recorded."""
    scale_min: float = SCALE_MIN
    """Scale of the action a = 0: s = scale_min + a * (scale_max - scale_min)."""
    scale_max: float = SCALE_MAX
    """Scale of the action a = 1."""
    init_mean_scale: float = 0.6
    """Beta-mean scale of every chunk at initialisation (the head's bias is set to give it)."""
    init_min_shape: float = 2.0
    """The smaller of the two Beta parameters at initialisation (> 1: unimodal, as broad as the
    mean allows; 2 with init_mean_scale at mid-range gives Beta(2, 2))."""
    dropout: float = 0.0
    """Dropout in the attention layers, MLPs and the head (training only)."""
    query_match: bool = True
    """Query-conditioned detector: the pooled question becomes a 1×1 filter over a spatial map of
    each thumbnail; the best response over space and the chunk's frames, as a share among the
    video's chunks, enters the chunk state and biases its Beta towards larger scales. Without it
    the chunks must learn "shows what the question names" through the pooled features and the
    mixer alone."""
    match_stage: int = 2
    """Conv stage (1–4, stride 2**stage) whose feature map the detector scans (conv encoder only;
    the pretrained tower's token features are scanned instead). Early maps keep small objects and
    their colours; the last one pools them away."""
    match_gain: float = 4.0
    """Initial gain of the detector's log share ratio on the Beta logits (learned afterwards). The
    detector starts as a zero filter (every ratio 0), so the gain has no effect at first; once the
    detector ranks the chunks, the gain turns its log share ratios into a prior on the Beta means
    that the policy gradient refines. It starts large because AdamW moves a scalar by about lr
    per step."""

    # What the allocator was trained against (written when it is saved by the trainer; None in
    # files saved before these fields existed). Loading it against a backbone whose signature
    # differs is refused; frames_per_chunk and thumb_side above are part of the same contract.
    backbone: str | None = None
    """Name, local path or hub id of the backbone the allocator was trained against (shown to
    people; matching uses the fields below)."""
    backbone_model_type: str | None = None
    """That backbone's model type (``qwen2_5_vl``, ``qwen3_vl``)."""
    backbone_patch_factor: int | None = None
    """Its pixels per visual-token side (patch size × spatial merge: 28 or 32)."""
    backbone_vocab_size: int | None = None
    """Entries in its tokenizer's vocabulary (added tokens included)."""
    backbone_vocab_sha256: str | None = None
    """sha256 of its tokenizer's vocabulary (the sorted (token, id) pairs as JSON)."""
    backbone_chat_template_sha256: str | None = None
    """sha256 of its processor's chat template."""
    backbone_weights_sha256: str | None = None
    """Fingerprint of its weights: sha256 of the signs of a strided sample of its input embeddings
    (two checkpoints with one tokenizer, e.g. a fine-tune, differ here; dtypes do not)."""

    def __post_init__(self) -> None:
        positive = (
            "thumb_side",
            "frames_per_chunk",
            "hidden_dim",
            "num_heads",
            "mlp_ratio",
            "max_chunks",
            "vocab_size",
            "max_query_tokens",
            "query_embed_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"num_layers must be an integer >= 0, got {self.num_layers!r}")
        if self.num_layers == 0 and self.thumb_encoder != "probe":
            raise ValueError("num_layers=0 (no mixer) is only for thumb_encoder='probe'")
        if self.thumb_encoder == "probe":
            for name in ("probe_layers", "probe_heads", "probe_hidden_size"):
                value = getattr(self, name)
                if not isinstance(value, int) or value <= 0:
                    raise ValueError(
                        f'thumb_encoder="probe" needs {name} >= 1 (the probe VLM\'s shape), got '
                        f"{value!r}"
                    )
            if not 0 < self.probe_budget <= 1:
                raise ValueError(f"probe_budget must be in (0, 1], got {self.probe_budget}")
            if self.query_match:
                raise ValueError(
                    'thumb_encoder="probe" reads the backbone\'s own binding; set query_match '
                    "false (the probe's attention shares take the detector's place)"
                )
        if self.query_layers < 0:
            raise ValueError(f"query_layers must be >= 0, got {self.query_layers}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads among the divisors of hidden_dim"
            )
        if self.hidden_dim % 16:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be a multiple of 16 (the conv encoder's "
                "channels are hidden_dim/8, /4, /2 and the time embedding pairs sines and cosines)"
            )
        if self.thumb_side < 16:
            raise ValueError(f"thumb_side={self.thumb_side} is too small; use at least 16 pixels")
        if self.query_encoder not in QUERY_ENCODERS:
            raise ValueError(
                f"query_encoder={self.query_encoder!r}; choose one of {QUERY_ENCODERS}"
            )
        if self.thumb_encoder not in THUMB_ENCODERS:
            raise ValueError(
                f"thumb_encoder={self.thumb_encoder!r}; choose one of {THUMB_ENCODERS}"
            )
        if self.thumb_encoder == "pretrained" and not self.pretrained_vision:
            raise ValueError(
                'thumb_encoder="pretrained" needs pretrained_vision (a local folder or hub id of a '
                'CLIP/SigLIP vision tower); set it, or use thumb_encoder="conv"'
            )
        for name in ("pretrained_image_mean", "pretrained_image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} needs 3 values (R, G, B), got {value!r}")
            setattr(self, name, [float(v) for v in value])
        if min(self.pretrained_image_std) <= 0:
            raise ValueError(
                f"pretrained_image_std must be positive, got {self.pretrained_image_std}"
            )
        if not 0 < self.scale_min < self.scale_max:
            raise ValueError(
                f"need 0 < scale_min < scale_max, got scale_min={self.scale_min}, "
                f"scale_max={self.scale_max}"
            )
        if not self.scale_min < self.init_mean_scale < self.scale_max:
            raise ValueError(
                f"init_mean_scale={self.init_mean_scale} must lie strictly between scale_min="
                f"{self.scale_min} and scale_max={self.scale_max}"
            )
        if self.init_min_shape <= 1:
            raise ValueError(
                f"init_min_shape={self.init_min_shape} must be > 1 (the head gives alpha, beta > 1)"
            )
        if self.match_stage not in (1, 2, 3, 4):
            raise ValueError(f"match_stage must be 1, 2, 3 or 4, got {self.match_stage!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("backbone_patch_factor", "backbone_vocab_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def signature(self) -> dict[str, Any] | None:
        """The recorded backbone fields that must match (see resadapt.compat), or None when the
        allocator records no backbone."""
        if self.backbone_model_type is None:
            return None
        return {name: getattr(self, name) for name in SIGNATURE_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AllocatorConfig:
        """Build a config from ``to_dict`` output; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown allocator config keys {unknown}; the checkpoint was written by another "
                "version of the allocator (known keys: " + ", ".join(sorted(known)) + ")"
            )
        return cls(**values)
