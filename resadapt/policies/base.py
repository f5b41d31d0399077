"""The policy interface and the one registry of policies by name.

Owns what a policy sees (:class:`AllocationContext`) and reports (:class:`ProbeCost`), the options
it is built from (:class:`PolicyOptions`), the :class:`Policy` base class (name, description,
operator, budget fitting, the attributes the pipeline, the evaluator and the app read), and the
registry: :func:`register_policy`, :func:`policy_names`, :func:`policy_class`,
:func:`make_policy`; a ``scorer+operator`` name is resolved by the composer that
resadapt.policies.compose installs (:func:`set_composer`). Knows no particular policy (each is one
class in its own module, registered when resadapt.policies is imported) and nothing about how the
backbone encodes chunks.

Letters: T sampled frames, K chunks, F frames per chunk, S thumbnail side.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from allocator import AllocatorConfig
from resadapt.errors import PolicyError
from resadapt.policies.operators import RESIZE, SELECT_SIZES, Fitted, Operator
from resadapt.probe import ProbeCost  # noqa: F401 (re-exported: what a policy reports)
from resadapt.prune import CONTEXTUAL_SHARE

if TYPE_CHECKING:
    from resadapt.backbone import Backbone
    from resadapt.geometry import Geometry
    from resadapt.video import SampledVideo

THUMB_SIDE = AllocatorConfig.__dataclass_fields__["thumb_side"].default
"""Thumbnail side of the training-free policies: the allocator's default, so that one decoded
video's thumbnails serve every policy; a loaded allocator reads its own (``Learned.thumb_side``)."""
MIN_SCALE = 0.2
"""Lowest scale the training-free policies propose (the allocator's default s_min)."""
PROBE_BUDGET = 0.1
"""Default visual tokens of the attention policy's probe pass, as a share of the full-resolution
tokens (every chunk at one size: the largest that fits, at least the smallest)."""
POLICY_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
"""A policy name: lower case, digits, ``_`` and ``-`` (``,`` ``:`` and ``+`` separate names and
paths in ``--policies``)."""
APP_RANK = 50
"""Default place of a policy in the app's list (lower first): after the query-aware policies and
the peers, before the training-free baselines."""


@dataclass(frozen=True)
class InApp:
    """Where the app shows a policy."""

    rank: int = APP_RANK
    """Place in the app's list of policies (lower first; ties in registration order)."""
    compared: bool = False
    """Whether the app's comparison runs it (besides the pipeline's default policy)."""


@dataclass
class AllocationContext:
    """What a policy may look at: cheap thumbnails of the sampled frames and the question; the
    decoded frames and the backbone for a policy that runs the backbone itself (``attention``)."""

    thumbs: np.ndarray
    """(T, S, S, 3) uint8 RGB thumbnails of the sampled frames."""
    timestamps: np.ndarray
    """(T,) seconds."""
    question: str
    frames_per_chunk: int = 2
    video: SampledVideo | None = None
    """The decoded frames at the base size (the pipeline always gives them)."""
    backbone: Backbone | None = None
    """The frozen backbone (the pipeline always gives it)."""
    probe: ProbeCost | None = None
    """Set by a policy that ran a probe pass of the backbone; None otherwise."""
    notes: list[str] = field(default_factory=list)
    """What a policy did not read in full (e.g. a question cut to the allocator's query window),
    one sentence each; the pipeline reports them in the result."""

    @property
    def num_chunks(self) -> int:
        return len(self.thumbs) // self.frames_per_chunk

    def chunked_thumbs(self) -> np.ndarray:
        """(K, F, S, S, 3) thumbnails grouped by chunk."""
        k, f = self.num_chunks, self.frames_per_chunk
        return self.thumbs[: k * f].reshape(k, f, *self.thumbs.shape[1:])

    def chunk_times(self) -> np.ndarray:
        """(K,) mid-time of every chunk in seconds."""
        k, f = self.num_chunks, self.frames_per_chunk
        return self.timestamps[: k * f].reshape(k, f).mean(axis=1)


@dataclass(frozen=True)
class PolicyOptions:
    """The request's knobs a policy is built from; each policy reads the ones it has."""

    scale: float = 0.5
    """uniform: the one scale, in (0, 1]."""
    seed: int = 0
    """random: the seed of its draw."""
    learned: Policy | None = None
    """learned: the loaded allocator (a ``Learned``)."""
    probe_budget: float = PROBE_BUDGET
    """attention, keyframes: visual tokens of the probe pass, as a share of full resolution."""
    probe_layers: int | None = None
    """attention, keyframes: language-model layers of the probe pass (None: all)."""
    contextual_share: float = CONTEXTUAL_SHARE
    """prune: share of the kept visual tokens that are merged contextual tokens."""
    select_sizes: str = SELECT_SIZES[0]
    """``scorer+select``: the kept chunks at ``full`` resolution or at their ``own`` scales
    (resadapt.policies.operators.SELECT_SIZES)."""


class Policy(ABC):
    """One allocation policy: a score per chunk (:meth:`scales`) and what its operator does with
    the scores under the budget (:meth:`fit`). A subclass sets ``name`` and ``description`` and is
    registered with :func:`register_policy`."""

    name: ClassVar[str] = ""
    """The name users type (``--policy``, ``--policies``, the app)."""
    description: ClassVar[str] = ""
    """One line: what the policy does (the app's labels, ``--help``, the docs table)."""
    operator: ClassVar[Operator] = RESIZE
    """What the pipeline does with the scores under the budget (resadapt.policies.operators)."""
    capped: ClassVar[bool] = True
    """Whether the budget applies; False (vanilla): always full resolution, the reference, which
    the evaluator runs once rather than at every budget."""
    needs_allocator: ClassVar[bool] = False
    """Whether it reads a loaded allocator (``PolicyOptions.learned``); the evaluator's
    ``--policies`` then takes ``NAME:PATH``."""
    runs_probe: ClassVar[bool] = False
    """Whether it runs a probe pass of the backbone (and sets ``AllocationContext.probe``)."""
    fills_budget: bool = True
    """Whether the fit raises the scores to use the budget (True) or keeps them when they fit
    (False: the budget is a ceiling, for a policy that knows a smaller spend answers better; the
    result reports the retention spent). An instance may set its own (a loaded allocator)."""
    app: ClassVar[InApp | None] = InApp()
    """Where the app shows it; None: not offered in the app."""
    thumb_side: int = THUMB_SIDE
    """Side of the square thumbnails the policy reads, in pixels."""

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Policy:
        """The policy built from the request's options; raises a ResAdaptError naming a bad one."""
        return cls()

    @abstractmethod
    def scales(self, ctx: AllocationContext) -> np.ndarray:
        """(K,) scores in (0, 1], one per chunk (scales before fitting; ranks for ``select``)."""

    @classmethod
    def fit(
        cls,
        scales: np.ndarray,
        geometry: Geometry,
        base_h: int,
        base_w: int,
        cap: int | None,
        operator: Operator | None = None,
        encode_cap: int | None = None,
        fill: bool = True,
    ) -> Fitted:
        """(K,) scales within ``cap`` visual tokens (None: no cap) through the policy's operator,
        or through ``operator`` when given (scales chosen outside the policy are resized); the cap
        is ignored when the policy is not ``capped``. ``encode_cap``: what the tower may encode
        when the operator prunes after it. Returns the fitted scales and the tokens kept after the
        vision tower (None: no pruning); ``fill`` as ``fills_budget``."""
        operator = operator or cls.operator
        cap = cap if cls.capped else None
        return operator.fit(scales, geometry, base_h, base_w, cap, cls.name, encode_cap, fill)


_POLICIES: dict[str, type[Policy]] = {}
_COMPOSER: list[Callable[[str], type[Policy]]] = []
"""The function that resolves a ``scorer+operator`` name (resadapt.policies.compose)."""
COMPOSE = "+"
"""Joins a scorer and its operators in a policy name (``learned+select+prune``)."""


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available under ``cls.name`` everywhere policies are listed,
    validated or built. A name is registered once (PolicyError otherwise)."""
    name = getattr(cls, "name", "")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyError(f"a policy must be a subclass of Policy, got {cls!r}")
    if not POLICY_NAME.match(name):
        raise PolicyError(
            f"policy name {name!r} must be lower case letters, digits, _ or - (starting with a "
            "letter)"
        )
    if name in _POLICIES:
        raise PolicyError(f"a policy named {name!r} is already registered")
    if not cls.description or "\n" in cls.description:
        raise PolicyError(f"policy {name!r} needs a one-line description")
    _POLICIES[name] = cls
    return cls


def unregister_policy(name: str) -> None:
    """Remove a registered policy (tests that register their own)."""
    policy_class(name)
    del _POLICIES[name]


def policy_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_POLICIES)


def set_composer(composer: Callable[[str], type[Policy]]) -> None:
    """Install the resolver of ``scorer+operator`` names (resadapt.policies.compose does)."""
    _COMPOSER[:] = [composer]


def policy_class(name: str) -> type[Policy]:
    """The class registered under ``name``, or the combination a ``scorer+operator`` name makes;
    PolicyError naming the choices for an unknown one (or why a combination is refused)."""
    if COMPOSE in name and _COMPOSER:
        return _COMPOSER[0](name)
    if name not in _POLICIES:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(policy_names())}")
    return _POLICIES[name]


def describe_policies() -> str:
    """``name (description)`` of every registered policy, in order, ``;``-separated (help texts)."""
    return "; ".join(f"{name} ({cls.description})" for name, cls in _POLICIES.items())


def make_policy(
    name: str,
    *,
    scale: float = PolicyOptions.scale,
    seed: int = PolicyOptions.seed,
    learned: Policy | None = None,
    probe_budget: float = PROBE_BUDGET,
    probe_layers: int | None = None,
    contextual_share: float = CONTEXTUAL_SHARE,
    select_sizes: str = PolicyOptions.select_sizes,
) -> Policy:
    """The policy ``name`` built from the request's options (learned: a loaded allocator)."""
    options = PolicyOptions(
        scale, seed, learned, probe_budget, probe_layers, contextual_share, select_sizes
    )
    return policy_class(name).from_options(options)
