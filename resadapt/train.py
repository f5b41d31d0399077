"""``python -m resadapt.train``: train the allocator with CAPO against a frozen Qwen-VL backbone.

Owns the run's command line (the fields of :class:`resadapt.train_config.TrainConfig`, through
:mod:`resadapt.cli`) and nothing else: the config is :mod:`resadapt.train_config`, the loop
:mod:`resadapt.trainer`, rollouts and rewards :mod:`resadapt.rollout`, the objective's
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

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from allocator import Allocator
from resadapt import cli
from resadapt.train_config import TrainConfig
from resadapt.trainer import Trainer

PROG = "python -m resadapt.train"
DESCRIPTION = "Train the resolution allocator with CAPO against a frozen Qwen-VL backbone."


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
