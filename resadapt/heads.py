"""The layers and heads a needle test chose for a checkpoint: the small JSON stored beside the
checkpoint's name, its reading and its lookup.

Owns :class:`NeedleChoice`, where it is stored (:func:`needle_path`) and the lookup the attention
policies make. Knows nothing about how the test is run (resadapt.needle) or about the policies.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from resadapt.backbone import Backbone, weights_fingerprint
from resadapt.errors import ResAdaptError

logger = logging.getLogger(__name__)

NEEDLE_FILE = "needle_heads.json"
"""Name of the stored choice inside a local checkpoint folder."""
ROW_GROUPS = ("after_video", "last")
"""Query-row groups of the probe features, in their column order (resadapt.probe)."""


@dataclass
class NeedleChoice:
    """The layers and heads the needle test chose for one checkpoint (the stored JSON)."""

    backbone: str
    weights_sha256: str | None
    """The checkpoint's weights fingerprint (resadapt.compat): a stored choice for other weights
    is not used."""
    heads: list[list]
    """[row group, layer, head, hit rate] of every chosen head, best first (layers 0-based)."""
    clips: int
    num_frames: int
    size: int
    probe_budget: float
    all_mean_hit_rate: float
    """How often the mean of all layers and heads (today's default) ranks the needle first."""

    @property
    def deepest_layer(self) -> int:
        """Layers the probe must run (1 + the deepest chosen layer)."""
        return 1 + max(int(h[1]) for h in self.heads)

    def columns(self, layers: int, heads: int) -> list[int]:
        """Columns of the probe features (resadapt.probe.ProbeFeatures.attention, read through
        ``layers`` layers of ``heads`` heads) that the chosen heads are."""
        return [
            ROW_GROUPS.index(row) * layers * heads + int(layer) * heads + int(head)
            for row, layer, head, _ in self.heads
        ]

    def describe(self) -> str:
        """One line for results: the heads and their hit rates."""
        named = ", ".join(f"layer {h[1]} head {h[2]} ({h[0]}, {h[3]:.0%})" for h in self.heads)
        return (
            f"needle-found heads: {named}; the mean of all layers and heads found the needle in "
            f"{self.all_mean_hit_rate:.0%} of {self.clips} clips"
        )


def needle_path(name: str) -> Path:
    """Where the choice for checkpoint ``name`` is stored: inside a local folder, else (a hub id
    or a registered name) under ``~/.cache/resadapt/needle/``."""
    if Path(name).is_dir():
        return Path(name) / NEEDLE_FILE
    return Path.home() / ".cache" / "resadapt" / "needle" / (name.replace("/", "--") + ".json")


def save(choice: NeedleChoice, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(choice), indent=2) + "\n")
    return path


def load(path: str | Path) -> NeedleChoice:
    """A stored choice; ResAdaptError naming the file when it cannot be read."""
    try:
        return NeedleChoice(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ResAdaptError(f"cannot read the needle choice {path}: {e}") from e


@functools.cache
def _stored(path: str, weights: str | None) -> NeedleChoice | None:
    if not Path(path).is_file():
        return None
    choice = load(path)
    if choice.weights_sha256 is not None and weights is not None:
        if choice.weights_sha256 != weights:
            logger.warning("%s was found for other weights; reading every layer and head", path)
            return None
    return choice


def lookup(backbone: Backbone) -> NeedleChoice | None:
    """The stored choice for ``backbone`` (beside its name: :func:`needle_path`), or None."""
    path = needle_path(backbone.name)
    if not path.is_file():
        return None
    return _stored(str(path), weights_fingerprint(backbone))
