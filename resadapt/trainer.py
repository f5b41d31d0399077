"""The allocator's CAPO training run: data order and sharding, the clipped update, validation,
checkpoints, metrics and trackers (the contract and commands: :mod:`resadapt.train`).

Owns one run of a resolved config. Knows nothing about the command line; rollouts and rewards are
:mod:`resadapt.rollout`, the objective's arithmetic :mod:`resadapt.capo`, the run folder and resume
:mod:`resadapt.checkpoint`.

Shape legend: B prompts, M allocations (rollouts) per prompt, K chunks, D features.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import is_tensorboard_available, is_wandb_available, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from allocator import Allocator, AllocatorConfig, log_prob, mean_scale
from resadapt.capo import (
    concentration_cap_loss,
    concentration_loss,
    group_ppo_clip_loss,
    similarity_loss,
    total_loss,
)
from resadapt.checkpoint import (
    BEST,
    CONFIG_FILE,
    FINAL,
    METRICS_FILE,
    append_metrics,
    better_validation,
    checkpoints,
    find_resume,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_metrics,
    warn_config_changes,
)
from resadapt.data import load_examples
from resadapt.errors import ResAdaptError
from resadapt.pipeline import Pipeline, load_backbone
from resadapt.probe import FeatureCache
from resadapt.relevance import chunk_attention, distillation_loss, pad_targets
from resadapt.rollout import (
    ROLLOUT_STATS,
    VALIDATION_STATS,
    DecodeCache,
    Prompt,
    RolloutBatch,
    collect_rollouts,
    mean_or_nan,
    validate,
)
from resadapt.train_data import (
    build_allocator,
    decode_prompts,
    epoch_order,
    step_positions,
)

if TYPE_CHECKING:
    from resadapt.train_config import TrainConfig

logger = logging.getLogger(__name__)


RESUME_NEUTRAL = frozenset(
    {"steps", "resume", "out_dir", "log_with", "val_data", "val_size", "val_every", "video_root"}
    | {"checkpoint_every", "keep_checkpoints", "decode_cache_mb"}
)
"""Fields a resumed run may change without leaving the trajectory of the interrupted one."""
TRAIN_LOG = (
    "step %(step)d/%(steps)d reward %(reward).3f acc %(accuracy).3f retention %(retention).3f "
    "tokens/video %(visual_tokens).1f spread %(scale_spread).3f adv_std %(advantage_std).3f "
    "loss %(loss).4f attention %(attention_loss).3f (agree %(attention_agreement).2f) "
    "%(seconds).1fs"
)
"""Log line of a training step, formatted from its metrics record (and ``steps``)."""
VAL_LOG = (
    "val step %(step)d acc %(accuracy).3f retention %(retention).3f tokens/video "
    "%(visual_tokens).1f spread %(scale_spread).3f (%(videos)d videos) %(seconds).1fs"
)
"""Log line of a validation, formatted from its metrics record."""


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases, norms and other 1-D parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of update ``step`` (0-based): linear up to 1 over warmup_steps."""
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def idle_inputs(cfg: AllocatorConfig, device) -> dict[str, torch.Tensor]:
    """A one-chunk dummy batch for a process without prompts: DDP needs every process's backward."""
    f, s = cfg.frames_per_chunk, cfg.thumb_side
    return {
        "thumbs": torch.zeros(1, 1, f, 3, s, s, device=device),  # (B, K, F, 3, S, S)
        "query_ids": torch.zeros(1, 1, dtype=torch.long, device=device),  # (B, L)
        "query_mask": torch.ones(1, 1, dtype=torch.bool, device=device),  # (B, L)
        "chunk_mask": torch.ones(1, 1, dtype=torch.bool, device=device),  # (B, K)
        "chunk_times": torch.zeros(1, 1, device=device),  # (B, K)
    }


def policy_terms(
    out,
    actions: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    chunk_mask: torch.Tensor,
    cfg: AllocatorConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAPO's policy terms of one update on stored actions: (L_pg, L_sim, L_con), scalars.

    out: the allocator's forward on the prompts (alpha, beta (B, K), features (B, K, D));
    actions, old_log_prob (B, M, K); advantages (B, M) or (B, M, K); chunk_mask (B, K).
    """
    b, m, k = actions.shape
    alpha = out.alpha[:, None].expand(b, m, k)  # (B, M, K)
    beta = out.beta[:, None].expand(b, m, k)  # (B, M, K)
    new = log_prob(alpha, beta, actions)  # (B, M, K)
    pg = group_ppo_clip_loss(new, old_log_prob, advantages, chunk_mask)
    scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
    sim = similarity_loss(out.features, scales, chunk_mask)  # features (B, K, D)
    con = concentration_loss(out.alpha, out.beta, chunk_mask)
    return pg, sim, con


def _trackers(log_with: str) -> list[str]:
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    wanted = list(available) if log_with == "all" else [] if log_with == "none" else [log_with]
    for name in wanted:
        if not available[name]:
            logger.warning("%s is not installed; metrics go to %s only", name, METRICS_FILE)
    return [name for name in wanted if available[name]]


LOSS_TERMS = ("loss", "pg_loss", "sim_loss", "con_loss", "attention_loss", "cap_loss")
"""The loss terms of a step's metrics record, in its order: the total, then CAPO's terms."""


@dataclass(frozen=True)
class StepShares:
    """This process's shares of one step's global counts, by which its loss terms are scaled.

    A share = local / global count × world size (1 in one process; 0 when the whole step has
    none), so that DDP's average of the gradients is the gradient of the global means: ``chunk``
    of the valid chunks, ``pair`` of the adjacent pairs of valid chunks, ``video`` of the videos.
    ``global_chunks``: the step's valid chunks on every process together (0: no update).
    """

    chunk: float
    pair: float
    video: float
    global_chunks: float


@dataclass
class UpdateStats:
    """This process's figures of one step's update, before any reduction across processes; the
    defaults are those of a step without an update."""

    applied: bool = False
    """Whether the optimizer stepped (false when no process had a readable video)."""
    losses: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_TERMS, 0.0))
    """Each of ``LOSS_TERMS``, its mean over the PPO epochs."""
    concentration: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Sum, count and max of α + β over the valid chunks, at the first PPO epoch."""
    agree: float = 0.0
    """Prompts whose query detector and the backbone's attention pick the same chunk (last
    epoch)."""
    grad_norm: float = math.nan
    """The gradient norm before clipping, at the last PPO epoch."""


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run: the loaded backbone, the prepared allocator and the run's bookkeeping."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.started = time.perf_counter()
        self.out_dir = Path(config.out_dir)
        trackers = _trackers(config.log_with)
        self.accelerator = Accelerator(
            cpu=config.cpu or config.device == "cpu",
            log_with=trackers or None,
            project_dir=config.out_dir,
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        accelerator = self.accelerator
        self.is_main = accelerator.is_main_process
        source = {"benchmark": config.benchmark, "video_root": config.video_root}
        self.examples, self.skipped_rows = load_examples(config.data, **source)
        self.val_examples = (
            load_examples(config.val_data, config.val_size, **source)[0] if config.val_data else []
        )
        resume = find_resume(config.out_dir, config.resume)
        if config.device_map and accelerator.num_processes > 1:
            raise ResAdaptError("--device-map auto is for one process; drop it under DDP")
        self.backbone = load_backbone(config, device=str(accelerator.device))
        self.pipeline = Pipeline(self.backbone)
        self.cache = DecodeCache(self.pipeline, config.decode_cache_mb * 2**20)
        self.probe_model = None
        """The probe VLM when it is not the backbone (``--probe-backbone``)."""
        if config.probe_backbone is not None:
            self.probe_model = load_backbone(
                replace(config, backbone=config.probe_backbone), device=str(accelerator.device)
            )
        self.features = FeatureCache()
        """A probe head's probe passes by (video, question): once per prompt, across rollouts,
        epochs and validations (the probe VLM is frozen)."""
        set_seed(config.seed)  # after the backbone: the tiny builders reseed torch
        allocator = build_allocator(config, self.backbone, resume, self.probe_model)
        if config.attention_weight and not allocator.config.query_match:
            raise ResAdaptError(
                "--attention-weight needs the allocator's query detector (query_match); set "
                "--attention-weight 0 or use an allocator config with query_match true"
            )
        self.attention_targets: dict[tuple[str, str], torch.Tensor] = {}
        """Full-resolution attention shares per (video, question): the backbone is frozen."""
        optimizer = torch.optim.AdamW(
            parameter_groups(allocator, config.weight_decay), lr=config.lr
        )
        warmup = functools.partial(warmup_factor, warmup_steps=config.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
        # The scheduler steps once per training step (not once per process, accelerate's default).
        # DDP must not broadcast buffers every forward (the "backbone" query encoder holds the
        # backbone's embedding matrix as one); torch's replacement flag is not in accelerate yet.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*broadcast_buffers.*deprecated", FutureWarning)
            self.model, self.optimizer, self.scheduler = accelerator.prepare(
                allocator, optimizer, scheduler
            )
        self.start_step = 0
        self.skipped_videos = 0
        self.probe_cache: dict = {}
        """Probe rewards by (video, question, chunks): the backbone is frozen and probes are
        scored deterministically, so a prompt met again costs no probe rows (in memory only)."""
        self.best: dict | None = None
        """Best validation so far: step, accuracy, retention (in the training state)."""
        self.last_validation: dict | None = None
        """The latest validation record (for the model card)."""
        if resume is not None:
            state = load_training_state(resume)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.start_step = int(state["step"])
            self.skipped_videos = int(state.get("skipped_videos", 0))
            self.best = state.get("best")
            warn_config_changes(resume, asdict(config), RESUME_NEUTRAL)
            logger.info("resumed from %s at step %d", resume, self.start_step)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(self.out_dir / METRICS_FILE, self.start_step)
        accelerator.wait_for_everyone()
        tracker_config = {k: ("" if v is None else v) for k, v in asdict(config).items()}
        accelerator.init_trackers("resadapt-train", config=tracker_config)
        if config.prompts_per_step < accelerator.num_processes:
            logger.warning(
                "%d prompts per step for %d processes: some processes idle every step",
                config.prompts_per_step,
                accelerator.num_processes,
            )
        n_params = sum(p.numel() for p in allocator.parameters() if p.requires_grad)
        logger.info(
            "training a %.2fM-parameter allocator on %d rows (%d processes) against %s",
            n_params / 1e6,
            len(self.examples),
            accelerator.num_processes,
            config.backbone,
        )

    @property
    def allocator(self) -> Allocator:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ one step
    def _prompts(self, step: int) -> tuple[list[Prompt], int, int]:
        """This process's decoded prompts of ``step``, skipped prompts, and the step's epoch."""
        accelerator, n = self.accelerator, len(self.examples)
        positions = step_positions(
            step, self.config.prompts_per_step, accelerator.process_index, accelerator.num_processes
        )
        orders: dict[int, np.ndarray] = {}
        pairs = []
        for position in positions:
            epoch = position // n
            if epoch not in orders:
                orders[epoch] = epoch_order(n, self.config.seed, epoch)
            pairs.append((position, self.examples[int(orders[epoch][position % n])]))
        prompts, skipped = decode_prompts(pairs, self.cache, self.config)
        return prompts, skipped, step * self.config.prompts_per_step // n

    def _targets(self, prompts: list[Prompt], k_max: int) -> torch.Tensor:
        """(B, K) the backbone's full-resolution attention shares of the prompts' chunks.

        One video per backbone forward: batched, the shares change in the last bits with the batch's
        other rows, and a resumed or multi-process run would not repeat the uninterrupted one.
        """
        memo = self.attention_targets
        for p in prompts:
            key = (p.example.video, p.request.question)
            if key not in memo:  # the vanilla policy: every chunk at scale 1, never budget-fitted
                full = self.pipeline.allocate(p.video, replace(p.request, policy="vanilla"))
                video = self.pipeline.chunked(p.video, full)
                (memo[key],) = chunk_attention(self.backbone, [video], [p.request.question])
        shares = [memo[(p.example.video, p.request.question)] for p in prompts]
        targets = pad_targets(shares, k_max, self.config.attention_temperature)
        return targets.to(self.accelerator.device)

    def _loss(
        self,
        out,
        batch: RolloutBatch,
        chunk_share: float,
        pair_share: float,
        video_share: float,
        targets: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """CAPO's terms on the stored actions, each scaled by this process's share, and the loss.

        ``chunk_share`` = local / global valid chunks × world size (1 in one process), likewise
        ``pair_share`` for adjacent chunk pairs and ``video_share`` for videos; DDP's average of the
        gradients is then the gradient of the global means. ``targets`` (B, K): the backbone's
        attention shares the query detector is distilled toward (``--attention-weight``).
        """
        config = self.config
        pg, sim, con = policy_terms(
            out,
            batch.actions,
            batch.log_prob,
            batch.advantages,
            batch.chunk_mask,
            self.allocator.config,
        )
        parts = {
            "pg_loss": chunk_share * pg,
            "sim_loss": pair_share * sim,
            "con_loss": chunk_share * con,
            "attention_loss": pg.new_zeros(()),
            "cap_loss": pg.new_zeros(()),
        }
        if config.max_concentration is not None:
            cap = concentration_cap_loss(
                out.alpha, out.beta, batch.chunk_mask, config.max_concentration
            )
            parts["cap_loss"] = chunk_share * cap
        if targets is not None:
            distil = distillation_loss(out.match_log_share, targets, batch.chunk_mask)
            parts["attention_loss"] = video_share * distil
        parts["loss"] = total_loss(
            parts["pg_loss"],
            parts["sim_loss"],
            parts["con_loss"],
            parts["attention_loss"],
            sim_weight=config.sim_weight,
            con_weight=config.con_weight,
            attention_weight=config.attention_weight,
            cap=parts["cap_loss"],
        )
        return parts

    def _reduce(self, values: list[float], reduction: str = "sum") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction=reduction).tolist()

    def _rollouts(self, prompts: list[Prompt]) -> RolloutBatch | None:
        """The rollouts of this process's prompts: ``num_rollouts`` sampled allocations per prompt,
        answered by the backbone, graded, with their advantages (None without prompts)."""
        config = self.config
        batch = None
        if prompts:
            batch = collect_rollouts(
                self.pipeline,
                self.allocator,
                prompts,
                config,
                probe_cache=self.probe_cache,
                features=self.features,
                probe_model=self.probe_model,
            )
        return batch

    def _shares(self, batch: RolloutBatch | None, num_prompts: int) -> StepShares:
        """This process's shares of the step's valid chunks, chunk pairs and videos (every process
        calls it: the global counts are one reduction across processes)."""
        chunks = float(batch.chunk_mask.sum()) if batch is not None else 0.0
        pairs = (
            0.0
            if batch is None
            else float((batch.chunk_mask[:, 1:] & batch.chunk_mask[:, :-1]).sum())
        )
        videos = float(num_prompts) if batch is not None else 0.0
        g_chunks, g_pairs, g_videos = self._reduce([chunks, pairs, videos])
        world = self.accelerator.num_processes
        return StepShares(
            chunk=chunks / g_chunks * world if g_chunks else 0.0,
            pair=pairs / g_pairs * world if g_pairs else 0.0,
            video=videos / g_videos * world if g_videos else 0.0,
            global_chunks=g_chunks,
        )

    def _update(
        self,
        batch: RolloutBatch | None,
        shares: StepShares,
        targets: torch.Tensor | None,
    ) -> UpdateStats:
        """``ppo_epochs`` clipped optimizer steps on the stored actions of ``batch`` (the scheduler
        is not stepped here). A process without a batch backpropagates a zero loss through every
        parameter, so that every process joins DDP's gradient reduction. ``targets`` (B, K): the
        attention shares the query detector is distilled toward, or None."""
        config, accelerator = self.config, self.accelerator
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        concentration = [0.0, 0.0, 0.0]  # sum, count, max of α + β over valid chunks (1st epoch)
        agree = 0.0  # prompts whose detector and backbone attention pick the same chunk
        grad_norm = math.nan
        self.model.train()
        for _ in range(config.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            if batch is not None:
                out = self.model(**batch.inputs)
                parts = self._loss(out, batch, shares.chunk, shares.pair, shares.video, targets)
                if concentration[1] == 0:
                    total = (out.alpha + out.beta).detach()[batch.chunk_mask]  # (valid,)
                    concentration = [float(total.sum()), total.numel(), float(total.max())]
                if targets is not None:
                    picks = out.match_log_share.detach().masked_fill(~batch.chunk_mask, -math.inf)
                    same = picks.argmax(dim=1) == targets.argmax(dim=1)
                    agree = float(same.sum())
            else:
                out = self.model(**idle_inputs(self.allocator.config, accelerator.device))
                zero = 0.0 * (out.alpha.sum() + out.beta.sum() + out.features.sum())
                if out.match_log_share is not None:
                    zero = zero + 0.0 * out.match_log_share.sum()
                parts = dict.fromkeys(sums, zero)
            accelerator.backward(parts["loss"])
            grad_norm = float(
                accelerator.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            )
            self.optimizer.step()
            for k in sums:
                sums[k] += float(parts[k].detach()) / config.ppo_epochs
        return UpdateStats(
            applied=True,
            losses=sums,
            concentration=concentration,
            agree=agree,
            grad_norm=grad_norm,
        )

    def _metrics(
        self,
        step: int,
        epoch: int,
        skipped: int,
        batch: RolloutBatch | None,
        update: UpdateStats,
        lr: float,
    ) -> dict:
        """The step's metrics record, every figure global (reduced across processes; every process
        calls it and gets the same record), without ``seconds``. Adds the step's skipped videos to
        the run's total."""
        config = self.config
        losses = dict(
            zip(update.losses, self._reduce(list(update.losses.values()), "mean"), strict=True)
        )
        stats = batch.stats if batch is not None else dict.fromkeys(ROLLOUT_STATS, 0.0)
        totals = dict(
            zip(ROLLOUT_STATS, self._reduce([stats[k] for k in ROLLOUT_STATS]), strict=True)
        )
        skipped_step, g_agree, con_sum, con_count = self._reduce(
            [float(skipped), update.agree, *update.concentration[:2]]
        )
        (con_max,) = self._reduce([update.concentration[2]], "max")
        self.skipped_videos += int(skipped_step)
        n = totals["rollouts"]
        adv_mean = mean_or_nan(totals["advantage"], n)
        adv_var = mean_or_nan(totals["advantage_sq"], n) - adv_mean**2
        if not update.applied:
            losses = dict.fromkeys(losses, math.nan)
        return {
            "split": "train",
            "step": step + 1,
            "epoch": epoch,
            "reward": mean_or_nan(totals["reward"], n),
            "accuracy": mean_or_nan(totals["correct"], n),
            "retention": mean_or_nan(totals["retention"], n),
            "visual_tokens": mean_or_nan(totals["visual_tokens"], n),
            "scale_spread": mean_or_nan(totals["scale_spread"], n),
            "policy_spread": mean_or_nan(totals["policy_spread"], totals["prompts"]),
            "attention_agreement": (
                mean_or_nan(g_agree, totals["prompts"]) if config.attention_weight else math.nan
            ),
            "advantage_mean": adv_mean,
            "advantage_std": math.sqrt(max(adv_var, 0.0)) if n else math.nan,
            "probe_rows": int(totals["probe_rows"]),
            "probe_gap": (
                mean_or_nan(totals["probe_gap"], totals["prompts"])
                if config.probe_credit
                else math.nan
            ),
            "concentration_mean": mean_or_nan(con_sum, con_count),
            "concentration_max": con_max if con_count else math.nan,
            **losses,
            "grad_norm": update.grad_norm,
            "lr": lr,
            "prompts": int(totals["prompts"]),
            "rollouts": int(n),
            "skipped_videos": int(skipped_step),
            "skipped_videos_total": self.skipped_videos,
            "skipped_rows": sum(self.skipped_rows.values()),
            "world_size": self.accelerator.num_processes,
        }

    def train_step(self, step: int) -> dict:
        """One CAPO step: rollouts, attention targets, ``ppo_epochs`` clipped updates, metrics;
        returns the step's metrics record (global: the same on every process)."""
        start = time.perf_counter()
        prompts, skipped, epoch = self._prompts(step)
        batch = self._rollouts(prompts)
        shares = self._shares(batch, len(prompts))
        targets = None
        if batch is not None and self.config.attention_weight:
            targets = self._targets(prompts, batch.chunk_mask.shape[1])  # (B, K)
        lr = self.scheduler.get_last_lr()[0]
        if shares.global_chunks:
            update = self._update(batch, shares, targets)
        else:
            logger.warning("step %d: no readable video in the whole step; no update", step + 1)
            update = UpdateStats()
        self.scheduler.step()
        record = self._metrics(step, epoch, skipped, batch, update, lr)
        record["seconds"] = time.perf_counter() - start
        return record

    # ------------------------------------------------------------------ validation
    def validate(self, step: int) -> dict:
        """Deterministic policy on this process's share of the validation rows; global means."""
        accelerator, config = self.accelerator, self.config
        start = time.perf_counter()
        pairs = [
            (i, ex)
            for i, ex in enumerate(self.val_examples)
            if i % accelerator.num_processes == accelerator.process_index
        ]
        prompts, skipped = decode_prompts(pairs, self.cache, config)
        stats = dict.fromkeys(VALIDATION_STATS, 0.0)
        if prompts:
            stats = validate(
                self.pipeline,
                self.allocator,
                prompts,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.prompts_per_step,
                features=self.features,
                probe_model=self.probe_model,
                operator=config.operator,
            )
        totals = dict(
            zip(VALIDATION_STATS, self._reduce([stats[k] for k in VALIDATION_STATS]), strict=True)
        )
        (skipped_total,) = self._reduce([float(skipped)])
        n = totals["videos"]
        return {
            "split": "val",
            "step": step,
            "accuracy": mean_or_nan(totals["accuracy"], n),
            "retention": mean_or_nan(totals["retention"], n),
            "visual_tokens": mean_or_nan(totals["visual_tokens"], n),
            "scale_spread": mean_or_nan(totals["scale_spread"], n),
            "videos": int(n),
            "skipped_videos": int(skipped_total),
            "seconds": time.perf_counter() - start,
        }

    # ------------------------------------------------------------------ output
    def _record(self, record: dict) -> None:
        """Main process: one metrics.jsonl line and the trackers; every process: nothing else."""
        if self.is_main:
            append_metrics(self.out_dir / METRICS_FILE, record)
        split = record["split"]
        if split == "val":
            self.last_validation = record
        numbers = {
            f"{split}/{k}": v
            for k, v in record.items()
            if isinstance(v, int | float) and k != "step" and math.isfinite(v)
        }
        self.accelerator.log(numbers, step=record["step"])

    def _card(self) -> dict:
        """The model card's training command and latest validation figures."""
        card = {"train_command": f"python -m resadapt.train --config {CONFIG_FILE}"}
        allocator = self.allocator
        if allocator.config.thumb_encoder == "probe":
            card["num_parameters"] = sum(p.numel() for p in allocator.parameters())
            minutes = (time.perf_counter() - self.started) / 60
            card["train_cost"] = (
                f"{minutes:.1f} min of wall time in this process up to this checkpoint "
                f"({self.config.prompts_per_step} prompts × {self.config.num_rollouts} rollouts "
                f"per step, {self.features.passes} probe passes, on "
                f"{self.accelerator.device}, {self.accelerator.num_processes} process(es))"
            )
        if self.last_validation is not None:
            card["validation"] = {
                k: self.last_validation[k] for k in ("step", "accuracy", "retention", "videos")
            }
        return card

    def save(self, name: str, step: int) -> None:
        """Main process writes out_dir/<name>; the others wait for it."""
        if self.is_main:
            state = {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "skipped_videos": self.skipped_videos,
                "world_size": self.accelerator.num_processes,
                "best": self.best,
            }
            save_checkpoint(
                self.out_dir / name, self.allocator, state, asdict(self.config), self._card()
            )
            keep = self.config.keep_checkpoints
            if keep and name != FINAL:
                for _, old in checkpoints(self.out_dir)[:-keep]:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def run(self) -> Allocator:
        """Train from the start (or resumed) step to ``steps``; returns the trained allocator."""
        config = self.config
        progress = tqdm(
            total=config.steps,
            initial=self.start_step,
            disable=not self.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        with logging_redirect_tqdm():
            for step in range(self.start_step, config.steps):
                record = self.train_step(step)
                self._record(record)
                progress.update(1)
                logger.info(TRAIN_LOG, {**record, "steps": config.steps})
                done = step + 1
                every = config.val_every
                # Validation before the step's checkpoint, so that it holds the best so far.
                if self.val_examples and ((every and done % every == 0) or done == config.steps):
                    val = self.validate(done)
                    self._record(val)
                    logger.info(VAL_LOG, val)
                    if better_validation(val, self.best):
                        self.best = {k: val[k] for k in ("step", "accuracy", "retention")}
                        self.save(BEST, done)
                        logger.info("new best at step %d: %s", done, self.out_dir / BEST)
                if config.checkpoint_every and done % config.checkpoint_every == 0:
                    self.save(f"checkpoint-{done}", done)
        progress.close()
        self.save(FINAL, max(self.start_step, config.steps))
        self.accelerator.end_training()
        logger.info(
            "done: %s (skipped %d invalid rows and %d prompts with an unreadable video)",
            self.out_dir / FINAL,
            sum(self.skipped_rows.values()),
            self.skipped_videos,
        )
        return self.allocator


def train(config: TrainConfig) -> Allocator:
    """Run CAPO training as configured; returns the trained allocator (every process)."""
    return Trainer(config).run()
