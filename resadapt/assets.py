"""Where the bundled offline world lives, and the defaults it implies.

Owns the paths of the bundled backbone, allocator and example clips under ``assets/``, and the
environment variables that override them. Knows nothing about loading or running models.
"""

from __future__ import annotations

import json
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


def examples() -> list[dict]:
    """Bundled example clips: rows of ``assets/examples/examples.jsonl`` with absolute paths."""
    index = EXAMPLES / "examples.jsonl"
    if not index.is_file():
        return []
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    for row in rows:
        row["video"] = str(EXAMPLES / row["video"])
    return rows
