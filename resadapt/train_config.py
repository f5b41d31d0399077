"""A training run's config: every flag of ``python -m resadapt.train`` as one typed dataclass.

Owns :class:`TrainConfig` (saved as train_config.json with every checkpoint), its cross-field rules
and the allocator knobs it may override. Knows nothing about running the training
(:mod:`resadapt.trainer`) or parsing a command line (:mod:`resadapt.train`, :mod:`resadapt.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from allocator.config import QUERY_ENCODERS, THUMB_ENCODERS
from resadapt.assets import default_backbone
from resadapt.capo import CONCENTRATION_WEIGHT, SIMILARITY_WEIGHT
from resadapt.cli import check_choices, check_field, default_of, option
from resadapt.config import BackboneConfig, Request
from resadapt.data import DataConfig
from resadapt.errors import ResAdaptError
from resadapt.policies import SELECT_SIZES
from resadapt.rollout import RolloutConfig

TRACKERS = ("none", "tensorboard", "wandb", "all")
MAX_CONCENTRATION = None
"""Default of ``--max-concentration``: off, no cap is imposed by default (why: docs/results.md,
"The concentration guard")."""
ALLOCATOR_KNOBS = (
    "hidden_dim",
    "num_layers",
    "num_heads",
    "query_encoder",
    "dropout",
    "thumb_encoder",
    "probe_layers",
    "probe_budget",
    "fills_budget",
)
"""TrainConfig fields that override the allocator's architecture (None: keep the default)."""


@dataclass
class TrainConfig(RolloutConfig, DataConfig, BackboneConfig):
    """Everything a training run depends on; saved as train_config.json with every checkpoint.

    Inherited: the device and backbone fields (:class:`BackboneConfig`) are the ones of ask / eval
    / the app (``--device cpu`` is ``--cpu``, any other device is the one accelerate assigns to the
    process); the data fields (:class:`DataConfig`) are the evaluator's; the rollout fields
    (:class:`RolloutConfig`: sampling, reward, credit and the seed) are the rollouts' own.
    """

    # --- data (besides DataConfig's) --------------------------------------------------------
    val_data: str | None = option("validation rows, .jsonl or .parquet; none: no validation", None)
    val_size: int = option("validate on the first N valid val rows", 64)
    val_every: int = option("validate every N steps and after the last; 0: after the last", 50)
    num_frames: int | None = option(
        "frames sampled per video (whole chunks); overrides --fps", None
    )
    fps: float = option("frames sampled per second (4 to 64 frames per video)", 2.0)
    budget: float | None = option(
        "retention ceiling in (0, 1] that every sampled allocation (and validation) is fitted to, "
        "as at inference with --budget; none: allocations are used as sampled",
        None,
    )
    encode_budget: float | None = option(
        "--operator prune or select+prune: share in (0, 1] of the full-resolution tokens the "
        "tower encodes before pruning to --budget, as at inference (default: the pipeline's)",
        None,
    )
    select_sizes: str = option(
        "--operator select or select+prune: kept chunks at full resolution or their own scales",
        default_of(Request, "select_sizes"),
        choices=SELECT_SIZES,
    )
    decode_cache_mb: int = option("decoded frames kept in memory (LRU by path), in MiB", 2048)
    # --- allocator ----------------------------------------------------------------------------
    allocator_config: str | None = option(
        "allocator architecture as JSON (AllocatorConfig fields, e.g. a config.json)", None
    )
    init_allocator: str | None = option(
        "allocator folder to warm-start from (fixes the architecture)", None
    )
    hidden_dim: int | None = option("allocator width D (default: allocator_config, else 256)", None)
    num_layers: int | None = option(
        "allocator mixer blocks (default: allocator_config, else 2)", None
    )
    num_heads: int | None = option(
        "allocator attention heads (default: allocator_config, else 4)", None
    )
    query_encoder: str | None = option(
        "question encoder: learned or backbone (the frozen backbone's input embeddings)",
        None,
        choices=QUERY_ENCODERS,
    )
    dropout: float | None = option("allocator dropout (default: allocator_config, else 0)", None)
    thumb_encoder: str | None = option(
        "chunk encoder: conv, pretrained, or probe (the frozen backbone's own low-resolution pass: "
        "attention shares per layer and head and pooled hidden states; CAPO alone trains its head)",
        None,
        choices=THUMB_ENCODERS,
    )
    probe_layers: int | None = option(
        "--thumb-encoder probe: the deepest language-model layer the head reads (the probe runs "
        "only that deep; default: every layer)",
        None,
    )
    probe_budget: float | None = option(
        "--thumb-encoder probe: visual tokens of the probe pass as a share of full resolution "
        "(default 0.25)",
        None,
    )
    fills_budget: bool | None = option(
        "whether the fit raises every allocation to use the budget (true) or treats the budget as "
        "a ceiling the policy may stay under (false); none: the allocator config's (true)",
        None,
    )
    probe_backbone: str | None = option(
        "--thumb-encoder probe: a smaller checkpoint of the backbone's family to run the probe "
        "(default: the backbone itself)",
        None,
    )
    # --- steps (the rollouts of each: RolloutConfig) ------------------------------------------
    steps: int = option("training steps (one update each)", 500)
    prompts_per_step: int = option("prompts per step, all processes", 8)
    # --- optimisation -------------------------------------------------------------------------
    lr: float = option(
        "AdamW peak learning rate (for our small allocator; the reference's 1e-5 to 5e-5 is for "
        "its larger network)",
        1e-4,
    )
    weight_decay: float = option("AdamW weight decay (matrices only, not biases or norms)", 0.1)
    grad_clip: float = option("gradient norm clip", 1.0)
    warmup_steps: int = option("linear warm-up steps, then constant", 30)
    ppo_epochs: int = option("updates per batch of rollouts (1: ratio 1, clip inactive)", 1)
    sim_weight: float = option("weight of the temporal-similarity loss", SIMILARITY_WEIGHT)
    con_weight: float = option("weight of the concentration loss", CONCENTRATION_WEIGHT)
    attention_weight: float | None = option(
        "weight of the attention distillation: the query detector's chunk shares are pulled "
        "toward the frozen backbone's attention shares at full resolution (0: off; needs an "
        "allocator with query_match); none: 0 for --thumb-encoder probe (CAPO alone), else 1",
        None,
    )
    attention_temperature: float = option(
        "sharpen the attention shares to share^(1/T) before distilling (T > 0)", 0.25
    )
    max_concentration: float | None = option(
        "cap on a chunk's Beta concentration α + β: above it a hinge penalty (weight 0.1) pulls "
        "it back; none: no cap (> 2, since α, β >= 1)",
        MAX_CONCENTRATION,
    )
    # --- run ----------------------------------------------------------------------------------
    out_dir: str = option("checkpoints and metrics", "runs/allocator")
    checkpoint_every: int = option("write checkpoint-{step} every N steps; 0: final only", 100)
    keep_checkpoints: int = option("keep the newest N checkpoint-* folders; 0: keep all", 0)
    log_with: str = option(
        f"trackers, if installed: {', '.join(TRACKERS)}", "none", choices=TRACKERS
    )
    cpu: bool = option(
        "run on the CPU even with a GPU present (multi-process CPU runs need it)", False
    )
    resume: str | None = option("auto (latest checkpoint in out_dir) or a checkpoint folder", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        check = partial(check_field, self)
        if self.backbone is None:  # resolved now, so that the saved config names it
            self.backbone = default_backbone()
        if self.budget is not None:
            check("budget", 0 < self.budget <= 1, "must be in (0, 1]")
        if self.encode_budget is not None:
            check("encode_budget", 0 < self.encode_budget <= 1, "must be in (0, 1]")
        positive = ("val_size", "steps", "prompts_per_step", "ppo_epochs")
        for name in positive:
            check(name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("val_every", "decode_cache_mb", "warmup_steps", "checkpoint_every"):
            check(name, getattr(self, name) >= 0, "must be at least 0")
        check("keep_checkpoints", self.keep_checkpoints >= 0, "must be at least 0")
        if self.num_frames is not None:
            check("num_frames", self.num_frames >= 2, "must be at least 2 (one chunk)")
        check("fps", self.fps > 0, "must be positive")
        check("lr", self.lr > 0, "must be positive")
        if self.attention_weight is None:  # resolved now, so that the saved config records it
            self.attention_weight = 0.0 if self.thumb_encoder == "probe" else 1.0
        if self.probe_layers is not None:
            check("probe_layers", self.probe_layers >= 1, "must be at least 1")
        if self.probe_budget is not None:
            check("probe_budget", 0 < self.probe_budget <= 1, "must be in (0, 1]")
        for name in ("weight_decay", "sim_weight", "con_weight", "attention_weight"):
            check(name, getattr(self, name) >= 0, "must be at least 0")
        check("grad_clip", self.grad_clip > 0, "must be positive")
        check("attention_temperature", self.attention_temperature > 0, "must be positive")
        if self.max_concentration is not None:
            check("max_concentration", self.max_concentration > 2, "must be above 2")
        check_choices(self)  # the command line checks these too; this covers TrainConfig(...)
        if self.init_allocator is not None:
            given = [k for k in ALLOCATOR_KNOBS if getattr(self, k) is not None]
            if self.allocator_config is not None:
                given.append("allocator_config")
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ResAdaptError(
                    f"--init-allocator fixes the architecture; drop {flags} or the warm start"
                )
