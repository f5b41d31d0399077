"""Atomic checkpoint folders and RNG state, shared by every trainer in the project.

Owns how a folder is written so that a crash never leaves a half-written one in place, and how
the python / numpy / torch RNG states are captured and restored. Knows nothing about what a
checkpoint holds.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


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
