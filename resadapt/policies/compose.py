"""Scorers × operators: a policy named ``scorer+operator[+operator]`` is the scorer's scores turned
into what the backbone sees by the named operators, under the one budget.

Owns the grammar of combined names, which combinations exist (:func:`combination_names`), the
peers' names as aliases of combinations (:data:`ALIASES`) and the class a combination makes
(:class:`Composed`, cached per name; the registry's :func:`~resadapt.policies.base.policy_class`
resolves ``+`` names here). Knows nothing about how a scorer scores or how an operator fits
(resadapt.policies.operators).

Grammar: a scorer is a registered policy whose own operator is ``resize`` (vanilla, uniform,
random, content, learned, attention, and any registered later); the operators follow in the order
``select`` then ``prune``: ``S`` (= resize), ``S+select``, ``S+prune`` (resize, then prune),
``S+select+prune``. ``vanilla`` scores every chunk alike and composes with ``prune`` only.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from resadapt.errors import PolicyError
from resadapt.policies.base import (
    COMPOSE,
    AllocationContext,
    Policy,
    PolicyOptions,
    policy_class,
    policy_names,
    set_composer,
)
from resadapt.policies.operators import RESIZE, Operator, PruneAfter, SelectChunks

OPERATOR_CHAINS: dict[tuple[str, ...], str] = {
    ("select",): "keep the top chunks, drop the rest",
    ("prune",): "resized to the encode budget, then pruned after the tower",
    ("select", "prune"): "top chunks to the encode budget, then pruned after the tower",
}
"""The operators a scorer may be followed by, in order, with the description they add."""
ALIASES: dict[str, str] = {"attention+select": "keyframes", "vanilla+prune": "prune"}
"""The peers are combinations; their registered names (and results) stay theirs."""
UNIFORM_ONLY = ("vanilla", "uniform")
"""Scorers that give every chunk the same score: ``select`` has nothing to rank."""


class Composed(Policy):
    """A scorer's policy with other operators: its scores, then ``operator``. Reads every other
    attribute (an allocator's ``warning``, ``check_fit``, ...) from the scorer."""

    scorer_class: ClassVar[type[Policy]]
    """The scorer's registered class."""
    chain: ClassVar[tuple[str, ...]] = ()
    """The operators' names after the scorer (a key of :data:`OPERATOR_CHAINS`)."""
    app = None  # the app offers combinations as an operator beside the policy

    def __init__(self, scorer: Policy, operator: Operator):
        self.scorer = scorer
        self.operator = operator

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Composed:
        return cls(cls.scorer_class.from_options(options), chain_operator(cls.chain, options))

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return self.scorer.scales(ctx)

    @property
    def thumb_side(self) -> int:
        return self.scorer.thumb_side

    # Instance facts of the scorer (a learned scorer's come from its allocator: a probe head runs
    # the probe pass and may treat the budget as a ceiling), not the class defaults of Policy.
    @property
    def runs_probe(self) -> bool:
        return self.scorer.runs_probe

    @property
    def fills_budget(self) -> bool:
        return self.scorer.fills_budget

    def __getattr__(self, name: str):
        scorer = self.__dict__.get("scorer")
        if scorer is None:
            raise AttributeError(name)
        return getattr(scorer, name)


def chain_operator(chain: tuple[str, ...], options: PolicyOptions | None = None) -> Operator:
    """The operator a chain of names makes: select (its sizes from ``options``; default: full)
    and/or prune."""
    sizes = (options or PolicyOptions()).select_sizes
    first = SelectChunks(sizes) if "select" in chain else RESIZE
    return PruneAfter(first) if "prune" in chain else first


def scorer_names() -> tuple[str, ...]:
    """The registered policies that can lead a combination (their own operator is resize)."""
    return tuple(n for n in policy_names() if policy_class(n).operator is RESIZE)


def combination_names() -> tuple[str, ...]:
    """Every valid ``scorer+operator`` name, scorer by scorer (the aliases among them)."""
    names = []
    for scorer in scorer_names():
        for chain in OPERATOR_CHAINS:
            if scorer not in UNIFORM_ONLY or chain == ("prune",):
                names.append(COMPOSE.join((scorer, *chain)))
    return tuple(names)


def policy_choices() -> tuple[str, ...]:
    """Every name a user may type: the registered policies, then the combinations."""
    return policy_names() + tuple(n for n in combination_names() if n not in policy_names())


_CLASSES: dict[str, type[Policy]] = {}


def composed_class(name: str) -> type[Policy]:
    """The class of a ``scorer+operator`` name (an alias: its peer's registered class);
    PolicyError, one sentence, for a name that is no valid combination."""
    if name in ALIASES:
        return policy_class(ALIASES[name])
    if name in _CLASSES:
        return _CLASSES[name]
    scorer, *rest = name.split(COMPOSE)
    chain = tuple(rest)
    scorer_cls = policy_class(scorer)  # PolicyError naming the choices for an unknown scorer
    if scorer_cls.operator is not RESIZE:
        raise PolicyError(
            f"{scorer!r} already has its own operator ({scorer_cls.operator.name}): lead "
            f"{name!r} with a scorer, one of {', '.join(scorer_names())}"
        )
    if chain not in OPERATOR_CHAINS:
        allowed = ", ".join(COMPOSE.join(("SCORER", *c)) for c in OPERATOR_CHAINS)
        raise PolicyError(f"unknown operators in {name!r}: a policy is SCORER (resize), {allowed}")
    if scorer in UNIFORM_ONLY and chain != ("prune",):
        raise PolicyError(f"{scorer} scores every chunk alike: it composes with prune only")
    cls = type(
        f"Composed_{'_'.join((scorer, *chain))}",
        (Composed,),
        {
            "name": name,
            "description": f"{scorer_cls.description}; {OPERATOR_CHAINS[chain]}",
            "operator": chain_operator(chain),
            "scorer_class": scorer_cls,
            "chain": chain,
            "needs_allocator": scorer_cls.needs_allocator,
            "__module__": __name__,
        },
    )
    _CLASSES[name] = cls
    return cls


set_composer(composed_class)
