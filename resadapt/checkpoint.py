"""Atomic checkpoint folders, RNG state, and the allocator trainer's run folder and resume.

Owns how a folder is written so that a crash never leaves a half-written one in place, how the
python / numpy / torch RNG states are captured and restored, and the layout of an allocator run
(``checkpoint-{step}/``, ``final/``, ``best/``, ``metrics.jsonl``) with the choice of where to
resume and the rule that picks the best validation. Knows nothing about models, optimisers or the
trainer beyond ``save_pretrained`` and state dicts.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch

from resadapt.errors import ResAdaptError

logger = logging.getLogger(__name__)

TRAINING_STATE = "training_state.pt"
"""Optimiser, scheduler, step and RNG states of a checkpoint (``torch.save`` of a dict)."""
CONFIG_FILE = "train_config.json"
"""The run's resolved config, saved in every checkpoint."""
METRICS_FILE = "metrics.jsonl"
"""One JSON object per step or validation, in out_dir."""
FINAL = "final"
"""Folder of the last step's checkpoint."""
BEST = "best"
"""Folder of the checkpoint with the best validation so far (see :func:`better_validation`)."""
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
"""Folder name of an intermediate checkpoint."""


def save_folder_atomic(folder: str | Path, write: Callable[[Path], None]) -> None:
    """Write ``folder`` via ``write(tmp)`` into ``.tmp-<name>`` beside it, then rename it in.

    An existing folder of that name (e.g. ``final/`` of a run being extended) is replaced: it is
    renamed to ``.old-<name>`` first and removed only after the new folder is in place.
    """
    folder = Path(folder)
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if folder.exists():
        old = folder.parent / f".old-{folder.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, as plain types and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------- allocator run folders
def _write_checkpoint(
    tmp: Path, model, training_state: dict, config: dict, card: dict | None
) -> None:
    model.save_pretrained(tmp, **({"model_card_kwargs": card} if card else {}))
    torch.save(training_state, tmp / TRAINING_STATE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(
    folder: str | Path, model, training_state: dict, config: dict, card: dict | None = None
) -> None:
    """Write ``folder`` atomically: ``model.save_pretrained`` files, TRAINING_STATE, CONFIG_FILE.

    ``config`` is the run's resolved config as a JSON-able dict; ``card`` the model card's
    extra fields (``save_pretrained(model_card_kwargs=...)``), if any.
    """
    write = functools.partial(
        _write_checkpoint, model=model, training_state=training_state, config=config, card=card
    )
    save_folder_atomic(folder, write)


def load_training_state(folder: str | Path) -> dict:
    """The TRAINING_STATE dict of a checkpoint folder, on the CPU."""
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-{step}`` folders in out_dir, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = CHECKPOINT.match(path.name)
        if match and (path / TRAINING_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume(out_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from, or None; refuses to overwrite a run unasked.

    ``resume``: None (out_dir must not hold a run), ``"auto"`` (the latest complete checkpoint or
    ``final/`` in out_dir, None if there is none) or a checkpoint folder.
    """
    out_dir = Path(out_dir)
    if resume is None:
        clash = [p.name for p in (out_dir / FINAL, out_dir / METRICS_FILE) if p.exists()]
        clash += [p.name for _, p in checkpoints(out_dir)]
        if clash:
            raise ResAdaptError(
                f"{out_dir} already holds a run ({', '.join(sorted(clash)[:3])}); pass --resume "
                "auto to continue it or choose another --out-dir"
            )
        return None
    if resume == "auto":
        found = checkpoints(out_dir)
        final = out_dir / FINAL
        if (final / TRAINING_STATE).is_file():
            found.append((int(load_training_state(final)["step"]), final))
        if not found:
            logger.info("no checkpoint in %s: starting from scratch", out_dir)
            return None
        return max(found, key=lambda item: item[0])[1]
    path = Path(resume)
    if not (path / TRAINING_STATE).is_file():
        raise ResAdaptError(f"--resume {path} is not a checkpoint folder (no {TRAINING_STATE})")
    return path


def better_validation(record: dict, best: dict | None) -> bool:
    """Whether validation ``record`` beats ``best`` (None: nothing yet): higher accuracy, and at
    equal accuracy lower retention (the cheaper policy). A NaN accuracy (no videos) never wins.

    Both carry ``accuracy`` and ``retention`` (a validation's metrics record, or the best-so-far
    summary a training state keeps).
    """
    accuracy = record["accuracy"]
    if not math.isfinite(accuracy):
        return False
    if best is None:
        return True
    if accuracy != best["accuracy"]:
        return accuracy > best["accuracy"]
    return record["retention"] < best["retention"]


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop the JSON lines of ``path`` whose ``step`` is after ``step`` (written after the
    checkpoint a resume starts from) and any line cut off by a crash; rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut off by the crash
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def warn_config_changes(folder: str | Path, config: dict, neutral: Collection[str]) -> None:
    """Log which settings of ``config`` differ from the CONFIG_FILE saved in ``folder``, except
    the ``neutral`` ones (those a resumed run may change without leaving its trajectory)."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("%s has no readable %s; cannot compare configs", folder, CONFIG_FILE)
        return
    changed = [k for k in config if k not in neutral and saved.get(k) != config[k]]
    if changed:
        logger.warning(
            "resuming with changed settings (%s): the run will differ from an uninterrupted one",
            ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in changed),
        )


def append_metrics(path: str | Path, record: dict) -> None:
    """Append ``record`` to ``path`` as one JSON line; NaN and infinite floats become null."""
    record = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
