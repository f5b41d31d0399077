"""Where the bundled offline world lives, and the defaults it implies.

Owns the paths of the bundled backbone, allocator and example clips under ``assets/``, and the
environment variables that override them. Knows nothing about loading or running models, nor about
the offline world that made the assets: the entry points import :mod:`resadapt.world`, which
registers the tiny random backbones (the fallback default here) by name.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_BACKBONE = ASSETS / "backbone"
BUNDLED_ALLOCATOR = ASSETS / "allocator"
EXAMPLES = ASSETS / "examples"
FALLBACK_BACKBONE = "tiny-random-qwen2.5-vl"
"""Used while no trained backbone is bundled: real classes, random weights, meaningless answers."""

BACKBONE_ENV = "RESADAPT_BACKBONE"
ALLOCATOR_ENV = "RESADAPT_ALLOCATOR"


def default_backbone() -> str:
    """$RESADAPT_BACKBONE, else the bundled trained backbone, else the tiny random one."""
    if os.environ.get(BACKBONE_ENV):
        return os.environ[BACKBONE_ENV]
    if (BUNDLED_BACKBONE / "config.json").is_file():
        return str(BUNDLED_BACKBONE)
    return FALLBACK_BACKBONE


def default_allocator() -> str | None:
    """$RESADAPT_ALLOCATOR, else the bundled allocator, else None (no learned policy)."""
    if os.environ.get(ALLOCATOR_ENV):
        return os.environ[ALLOCATOR_ENV]
    if (BUNDLED_ALLOCATOR / "config.json").is_file():
        return str(BUNDLED_ALLOCATOR)
    return None


def is_random_backbone(name: str) -> bool:
    """True for the tiny random backbones, whose answers carry no meaning."""
    return name.startswith("tiny-random-")


def is_bundled(path: str | None) -> bool:
    """True when ``path`` is the bundled backbone or allocator folder."""
    if not path:
        return False
    resolved = Path(path).resolve()
    return resolved in (BUNDLED_BACKBONE, BUNDLED_ALLOCATOR)


def provenance(name_or_path: str) -> str:
    """Where a backbone or allocator comes from, in words: the bundled tiny world, a model built
    in code by name, a local folder, or a hub id."""
    from resadapt.registry import backbone_builder

    if is_bundled(name_or_path):
        return "bundled tiny world"
    if backbone_builder(name_or_path) is not None:
        return "built in code by name, random weights"
    if Path(name_or_path).is_dir():
        return "local folder"
    return "hub id"


def examples() -> list[dict]:
    """Bundled example clips: ``{"video": absolute path, "question": prompt, "answer": gold,
    "problem_type", "num_options"}``.

    ``assets/examples/data.jsonl`` is written by ``python -m resadapt.synth``
    (docs/offline-world.md); the question is the prompt the backbone sees (multiple-choice options
    listed with their letters).
    """
    from resadapt.data import read_examples

    index = EXAMPLES / "data.jsonl"
    if not index.is_file():
        return []
    rows, _ = read_examples(index)
    return [
        {
            "video": e.video,
            "question": e.prompt(),
            "answer": e.gold(),
            "problem_type": e.problem_type,
            "num_options": len(e.options or []),
        }
        for e in rows
    ]
