"""``python -m resadapt.train``: train the allocator with CAPO against a frozen Qwen-VL backbone.

Owns the run's config (:class:`TrainConfig`) and its command line (:mod:`resadapt.cli`). The loop
is :mod:`resadapt.trainer`, rollouts and rewards :mod:`resadapt.rollout`, the objective's
arithmetic :mod:`resadapt.capo`, checkpoints and resume :mod:`resadapt.checkpoint`; the backbone is
never trained.

Contract (docs/capo.md). A step takes ``prompts_per_step`` rows in a seeded per-epoch order. Per
prompt: decode once; one allocator forward gives a Beta(α_k, β_k) per chunk k; M = ``num_rollouts``
actions a_k are drawn per chunk, s_k = s_min + a_k (s_max − s_min); the frozen backbone answers
all M allocations in one batch; each is graded (multiple-choice letter, exact, numeric, temporal
IoU) or scored by the probability of the gold answer; its cost is the fraction of the
full-resolution visual tokens it spent; CAPO advantages are computed per group of M. Update:
re-score the stored actions under the current policy, PPO clip (ε 0.2 / 0.28, dual clip 10, mean
over valid chunks) + ``sim_weight`` · L_sim + ``con_weight`` · L_con + ``attention_weight`` ·
KL(backbone attention shares ‖ query-detector shares) (:mod:`resadapt.relevance`); AdamW, linear
warm-up, gradient clipping; no KL to a reference policy, no entropy bonus. Inference and
validation use the Beta mean.

Where we differ from the paper and its reference code:
  * one Beta per chunk, sampled per chunk, so the log-density is that of the realised action (the
    reference samples per frame and averages the two frames of a chunk);
  * cost = token fraction by default (``--cost scale`` is the reference's normalised mean scale);
  * s_max = 1.0 (frames are decoded at the backbone's pixel cap); optional budget fitting of the
    sampled allocations in training (``--budget``), the way inference fits them;
  * lr 1e-4 by default, for our small from-scratch allocator (the reference's 1e-5 … 5e-5 is for
    its larger network); weight decay only on matrices (not on biases and norm gains);
  * ``ppo_epochs`` = 1 by default: rollouts and update see the same weights (and no dropout at
    the default 0), so the ratio is exactly 1, the clip is inactive and the gradient is the plain
    policy gradient −A·∇log π. With more epochs each one re-scores the stored actions under the
    updated policy and the clip applies;
  * ``--reward logprob`` (dense): exp of the mean log-probability of the gold answer's tokens (the
    end-of-turn token included), i.e. the per-token geometric-mean probability in (0, 1]. It is on
    the scale of a grade, so CAPO's "correct" threshold 0.35 keeps a meaning, and it needs no
    per-dataset offset (a sigmoid of the log-probability would). For multiple choice it scores the
    gold letter;
  * the attention distillation is ours: the backbone's full-resolution attention from the answer
    position, per chunk, is a dense per-chunk target that needs no labels (computed once per
    video; the backbone is frozen);
  * ``--advantage capo_chunk`` is ours: per-chunk credit from the group's own draws (a ridge
    regression of z(acc) on the standardised actions; each chunk's advantage loses what the other
    chunks' draws explain, a factorised action-dependent baseline; equations in
    :mod:`resadapt.capo`). CAPO gives every chunk of an allocation the same A_m;
  * ``--probe-credit w`` is ours (off by default): K extra backbone rows per prompt (chunk k at
    s_max, the others at s_min, scored by the gold answer's probability) give each chunk's reward
    when it alone is seen in full; chunk k's advantage gains w·d_k·(a_k − ā_k)·√12, d_k its
    probe's reward standardised over the K probes (equations in :mod:`resadapt.capo`). Probe rewards
    are cached per (video, question) for the run, since the backbone is frozen;
  * ``--max-concentration`` (ours, off by default): a hinge penalty on α + β above the cap.

Determinism and resume. The data order is a permutation per epoch drawn from (seed, epoch). The
draws of the prompt at stream position p (step × prompts_per_step + slot) come from a
``torch.Generator`` seeded by (seed, p), so they depend neither on the number of processes nor on
a resume; that is the sampling generator's whole state. Checkpoints hold the weights, optimiser,
scheduler, step and the python / numpy / torch RNG states (of the main process; nothing in the
default setup draws from the per-process RNGs). Resuming from step s and running to N gives
bitwise the weights of an uninterrupted run to N (CPU, same config and process count).

Many GPUs or nodes: ``accelerate launch`` starts one process per device (DDP). The prompts of a
step are split by slot (slot % world_size == rank); every process runs its own frozen backbone.
Each loss term is scaled by this process's share of the global count of what it averages over
(chunks, adjacent chunk pairs, videos: one all-reduce of three counts), so DDP's gradient average
is the gradient of the step's global means. Only the main process prints, writes metrics and
checkpoints; ``--resume`` needs out_dir on a file system every node sees.

Commands (one machine; after a crash; 8 GPUs; 2 nodes × 8 GPUs; 2 CPU processes):
    python -m resadapt.train --data train.jsonl --backbone PATH --out-dir runs/x
    python -m resadapt.train --data train.jsonl --backbone PATH --out-dir runs/x --resume auto
    accelerate launch --num_processes 8 -m resadapt.train --data train.jsonl --backbone PATH \\
        --out-dir runs/x
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST \\
        --num_processes 16 -m resadapt.train ...
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m resadapt.train ... --cpu
(``accelerate launch --cpu`` starts several CPU processes only through MPI; torchrun needs none.)
``--config FILE`` (YAML if PyYAML is installed, or JSON such as a run's train_config.json) gives
defaults that flags override.

Output in out_dir: ``checkpoint-{step}/`` every ``checkpoint_every`` steps, ``final/`` and, with
validation, ``best/`` (the best validation accuracy so far at the training budget, ties to the lower
retention; the best-so-far value is in every training state, so a resumed run keeps it), each
written to ``.tmp-<name>`` and renamed: ``config.json`` + ``model.safetensors`` (an allocator
folder for ``Learned.load`` / ``Allocator.from_pretrained``), ``training_state.pt`` (optimiser,
scheduler, step, RNG) and ``train_config.json`` (this run's resolved config); ``metrics.jsonl``,
one JSON object per step (``"split": "train"``, with ``concentration_mean`` / ``_max``, the mean
and max of α + β over the step's valid chunks) and per validation (``"split": "val"``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, fields

from allocator import Allocator
from allocator.config import QUERY_ENCODERS
from resadapt import cli
from resadapt.assets import default_backbone
from resadapt.benchmarks import BENCHMARK_NAMES
from resadapt.capo import (
    ADVANTAGE_MODES,
    CONCENTRATION_WEIGHT,
    CREDIT_RIDGE,
    PROBE_CREDIT,
    SIMILARITY_WEIGHT,
)
from resadapt.errors import ResAdaptError
from resadapt.pipeline import DeviceConfig, Request
from resadapt.rollout import COSTS, REWARDS
from resadapt.run_inputs import ALLOCATOR_KNOBS
from resadapt.trainer import Trainer

PROG = "python -m resadapt.train"
DESCRIPTION = "Train the resolution allocator with CAPO against a frozen Qwen-VL backbone."
TRACKERS = ("none", "tensorboard", "wandb", "all")
MAX_CONCENTRATION = None
"""Default of ``--max-concentration``: off, no cap is imposed by default (why: docs/results.md,
"The concentration guard")."""
MAX_NEW_TOKENS = 1024
"""Longest answer the backbone may generate during training."""


@dataclass
class TrainConfig(DeviceConfig):
    """Everything a training run depends on; saved as train_config.json with every checkpoint.

    The device fields (:class:`DeviceConfig`) are the ones of ask / eval / the app; ``--device
    cpu`` is ``--cpu``, any other device is the one accelerate assigns to the process.
    """

    # --- data ---------------------------------------------------------------------------------
    data: str = cli.option("training rows, .jsonl or .parquet (required)", "")
    val_data: str | None = cli.option(
        "validation rows, .jsonl or .parquet; none: no validation", None
    )
    benchmark: str | None = cli.option(
        "read --data (and --val-data) as this benchmark's published file (resadapt.benchmarks)",
        None,
        choices=BENCHMARK_NAMES,
    )
    video_root: str | None = cli.option(
        "folder of the --benchmark's videos (default: the folder of --data)", None
    )
    val_size: int = cli.option("validate on the first N valid val rows", 64)
    val_every: int = cli.option("validate every N steps and after the last; 0: after the last", 50)
    num_frames: int | None = cli.option(
        "frames sampled per video (whole chunks); overrides --fps", None
    )
    fps: float = cli.option("frames sampled per second (4 to 64 frames per video)", 2.0)
    budget: float | None = cli.option(
        "retention ceiling in (0, 1] that every sampled allocation (and validation) is fitted to, "
        "as at inference with --budget; none: allocations are used as sampled",
        None,
    )
    decode_cache_mb: int = cli.option("decoded frames kept in memory (LRU by path), in MiB", 2048)
    # --- backbone -----------------------------------------------------------------------------
    backbone: str = cli.option(
        "frozen backbone: a Qwen2.5-VL / Qwen3-VL checkpoint folder or hub id, or "
        "tiny-random-qwen2.5-vl / tiny-random-qwen3-vl; by default the bundled one",
        default_factory=default_backbone,
    )
    max_pixels: int | None = cli.option(
        "per-frame pixel cap, the full-resolution (scale 1) size", None
    )
    # --- allocator ----------------------------------------------------------------------------
    allocator_config: str | None = cli.option(
        "allocator architecture as JSON (AllocatorConfig fields, e.g. a config.json)", None
    )
    init_allocator: str | None = cli.option(
        "allocator folder to warm-start from (fixes the architecture)", None
    )
    hidden_dim: int | None = cli.option(
        "allocator width D (default: allocator_config, else 256)", None
    )
    num_layers: int | None = cli.option(
        "allocator mixer blocks (default: allocator_config, else 2)", None
    )
    num_heads: int | None = cli.option(
        "allocator attention heads (default: allocator_config, else 4)", None
    )
    query_encoder: str | None = cli.option(
        "question encoder: learned or backbone (the frozen backbone's input embeddings)",
        None,
        choices=QUERY_ENCODERS,
    )
    dropout: float | None = cli.option(
        "allocator dropout (default: allocator_config, else 0)", None
    )
    # --- rollouts and reward ------------------------------------------------------------------
    steps: int = cli.option("training steps (one update each)", 500)
    prompts_per_step: int = cli.option("prompts per step, all processes", 8)
    num_rollouts: int = cli.option("sampled allocations M per prompt", 8)
    answers_per_rollout: int = cli.option(
        "answers N per allocation: 1 greedy, more sampled (--reward grade)", 1
    )
    temperature: float = cli.option("sampling temperature of the answers when N > 1", 1.0)
    top_p: float = cli.option(
        "nucleus (top-p) of the sampled answers when N > 1, in (0, 1]; 1: off (the checkpoint's "
        "own value is never inherited)",
        1.0,
    )
    top_k: int = cli.option(
        "top-k of the sampled answers when N > 1; 0: off (never the checkpoint's own)", 0
    )
    max_new_tokens: int = cli.option(
        "longest answer generated, in tokens", cli.default_of(Request, "max_new_tokens")
    )
    reward: str = cli.option(
        "grade: graded answers; logprob: exp(mean log-prob of the gold answer)",
        "grade",
        choices=REWARDS,
    )
    cost: str = cli.option(
        "tokens: fraction of full-res visual tokens; scale: normalised mean scale",
        "tokens",
        choices=COSTS,
    )
    advantage: str = cli.option(
        "capo; capo_chunk: capo plus per-chunk credit (each chunk's advantage loses what the "
        "other chunks' draws explain of the reward); the ablations direct (z(acc) − λc) and none",
        "capo",
        choices=ADVANTAGE_MODES,
    )
    credit_ridge: float = cli.option(
        "ridge λ of the per-chunk credit regression (--advantage capo_chunk; > 0)", CREDIT_RIDGE
    )
    probe_credit: float = cli.option(
        "weight w of the probe credit: per prompt, K extra backbone rows (chunk k at full size, "
        "the others at the smallest) say how much each chunk alone helps the answer; chunk k's "
        "advantage gains w·d_k·(a_k − mean a_k)·√12, d_k its probe's reward standardised over "
        "the K probes (resadapt.capo); 0: no probes",
        PROBE_CREDIT,
    )
    # --- optimisation -------------------------------------------------------------------------
    lr: float = cli.option(
        "AdamW peak learning rate (for our small allocator; the reference's 1e-5 to 5e-5 is for "
        "its larger network)",
        1e-4,
    )
    weight_decay: float = cli.option("AdamW weight decay (matrices only, not biases or norms)", 0.1)
    grad_clip: float = cli.option("gradient norm clip", 1.0)
    warmup_steps: int = cli.option("linear warm-up steps, then constant", 30)
    ppo_epochs: int = cli.option("updates per batch of rollouts (1: ratio 1, clip inactive)", 1)
    sim_weight: float = cli.option("weight of the temporal-similarity loss", SIMILARITY_WEIGHT)
    con_weight: float = cli.option("weight of the concentration loss", CONCENTRATION_WEIGHT)
    attention_weight: float = cli.option(
        "weight of the attention distillation: the query detector's chunk shares are pulled "
        "toward the frozen backbone's attention shares at full resolution (0: off; needs an "
        "allocator with query_match)",
        1.0,
    )
    attention_temperature: float = cli.option(
        "sharpen the attention shares to share^(1/T) before distilling (T > 0)", 0.25
    )
    max_concentration: float | None = cli.option(
        "cap on a chunk's Beta concentration α + β: above it a hinge penalty (weight 0.1) pulls "
        "it back; none: no cap (> 2, since α, β >= 1)",
        MAX_CONCENTRATION,
    )
    # --- run ----------------------------------------------------------------------------------
    out_dir: str = cli.option("checkpoints and metrics", "runs/allocator")
    seed: int = cli.option("seed of the init, the data order and the draws", 0)
    checkpoint_every: int = cli.option("write checkpoint-{step} every N steps; 0: final only", 100)
    keep_checkpoints: int = cli.option("keep the newest N checkpoint-* folders; 0: keep all", 0)
    log_with: str = cli.option(
        f"trackers, if installed: {', '.join(TRACKERS)}", "none", choices=TRACKERS
    )
    cpu: bool = cli.option(
        "run on the CPU even with a GPU present (multi-process CPU runs need it)", False
    )
    resume: str | None = cli.option(
        "auto (latest checkpoint in out_dir) or a checkpoint folder", None
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ResAdaptError("--data is required: a .jsonl or .parquet file of training rows")
        if self.budget is not None:
            _check(self, "budget", 0 < self.budget <= 1, "must be in (0, 1]")
        positive = ("val_size", "steps", "prompts_per_step", "answers_per_rollout", "ppo_epochs")
        for name in positive:
            _check(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("val_every", "decode_cache_mb", "warmup_steps", "checkpoint_every"):
            _check(self, name, getattr(self, name) >= 0, "must be at least 0")
        _check(self, "keep_checkpoints", self.keep_checkpoints >= 0, "must be at least 0")
        _check(
            self,
            "num_rollouts",
            self.num_rollouts >= 2,
            "must be at least 2 (CAPO compares the allocations of one prompt)",
        )
        if self.num_frames is not None:
            _check(self, "num_frames", self.num_frames >= 2, "must be at least 2 (one chunk)")
        _check(self, "fps", self.fps > 0, "must be positive")
        _check(
            self,
            "max_new_tokens",
            1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            "must be in [1, 1024]",
        )
        _check(self, "temperature", self.temperature > 0, "must be positive")
        _check(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        _check(self, "top_k", self.top_k >= 0, "must be at least 0")
        _check(self, "lr", self.lr > 0, "must be positive")
        for name in ("weight_decay", "sim_weight", "con_weight", "attention_weight"):
            _check(self, name, getattr(self, name) >= 0, "must be at least 0")
        _check(self, "grad_clip", self.grad_clip > 0, "must be positive")
        _check(self, "attention_temperature", self.attention_temperature > 0, "must be positive")
        _check(self, "credit_ridge", self.credit_ridge > 0, "must be positive")
        _check(self, "probe_credit", self.probe_credit >= 0, "must be 0 or positive")
        if self.max_concentration is not None:
            _check(self, "max_concentration", self.max_concentration > 2, "must be above 2")
        if self.max_pixels is not None:
            _check(self, "max_pixels", self.max_pixels > 0, "must be positive")
        for f in fields(self):  # the command line checks these too; this covers TrainConfig(...)
            allowed, value = f.metadata["choices"], getattr(self, f.name)
            if allowed is not None and value is not None:
                _check(self, f.name, value in allowed, f"must be one of {', '.join(allowed)}")
        if self.answers_per_rollout > 1 and self.reward != "grade":
            raise ResAdaptError(
                "--answers-per-rollout > 1 needs --reward grade (the log-probability of the gold "
                "answer is deterministic); set it to 1"
            )
        if self.init_allocator is not None:
            given = [k for k in ALLOCATOR_KNOBS if getattr(self, k) is not None]
            if self.allocator_config is not None:
                given.append("allocator_config")
            if given:
                flags = ", ".join("--" + k.replace("_", "-") for k in given)
                raise ResAdaptError(
                    f"--init-allocator fixes the architecture; drop {flags} or the warm start"
                )


def _check(config: TrainConfig, name: str, ok: bool, rule: str) -> None:
    """Raise the one-sentence error of a field outside its range, naming the flag and value."""
    if not ok:
        value = getattr(config, name)
        raise ResAdaptError(f"--{name.replace('_', '-')} {rule}, got {value!r}")


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line (``--config FILE`` gives defaults that flags override).

    Raises :class:`cli.UsageError` / :class:`ResAdaptError`.
    """
    return cli.make(TrainConfig, cli.parse(argv, TrainConfig, prog=PROG, description=DESCRIPTION))


def train(config: TrainConfig) -> Allocator:
    """Run CAPO training as configured; returns the trained allocator (every process)."""
    if config.probe_credit and config.reward != "logprob":
        logging.getLogger(__name__).info(
            "--probe-credit: the probes are scored by the gold answer's probability, not by "
            "--reward %s (a finite difference needs a dense reward)",
            config.reward,
        )
    return Trainer(config).run()


def _run(argv: list[str] | None) -> int:
    train(parse_config(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    main_process = int(os.environ.get("RANK", "0")) == 0
    cli.setup_logging(logging.INFO if main_process else logging.WARNING)
    logging.getLogger("resadapt.video").setLevel(logging.WARNING)  # one line per decoded video
    return cli.run(functools.partial(_run, argv))


if __name__ == "__main__":
    sys.exit(main())
