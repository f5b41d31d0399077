"""Allocation policies: one score per temporal chunk, chosen before the backbone sees any pixel,
and the operator that turns the scores into what the backbone sees under the budget.

One class per policy, registered by name (:func:`register_policy`); everything that lists,
validates or builds policies (the pipeline, the CLIs, the evaluator, the app) reads the registry.
Importing this package registers the built-in policies in this order: vanilla, uniform, random
(:mod:`.fixed`), content (:mod:`.content`), learned (:mod:`.learned`), attention, keyframes
(:mod:`.attention`) and prune (:mod:`.posttower`). The interface and the registry are
:mod:`.base`; the operators (resize, select, prune) are :mod:`.operators`; ``scorer+operator``
names (``learned+select+prune``; the peers ``keyframes`` and ``prune`` are aliases of
``attention+select`` and ``vanilla+prune``) are :mod:`.compose`. Knows nothing about
budgets beyond the operators' fit (resadapt.geometry) or about how the backbone encodes chunks.
"""

# isort: off
# the modules register their policies when imported: this order is the registry's order
from resadapt.policies.base import (
    COMPOSE,
    MIN_SCALE,
    PROBE_BUDGET,
    THUMB_SIDE,
    AllocationContext,
    InApp,
    Policy,
    PolicyOptions,
    ProbeCost,
    describe_policies,
    make_policy,
    policy_class,
    policy_names,
    register_policy,
    unregister_policy,
)
from resadapt.policies.fixed import Random, Uniform, Vanilla
from resadapt.policies.content import Content
from resadapt.policies.learned import (
    HUB_ID,
    QUERY_HEAD_SHARE,
    Learned,
    allocator_inputs,
    check_allocator_path,
    check_fit,
    query_window,
)
from resadapt.policies.attention import (
    ATTENTION_QUERIES,
    ATTENTION_SHARPNESS,
    Attention,
    Keyframes,
    attention_scales,
)
from resadapt.policies.posttower import Prune
from resadapt.policies.operators import PRUNE, RESIZE, SELECT, SELECT_SIZES, Operator
from resadapt.policies.compose import (
    ALIASES,
    Composed,
    combination_names,
    policy_choices,
    scorer_names,
)
# isort: on

__all__ = [
    "ALIASES", "COMPOSE", "SELECT_SIZES", "Composed", "combination_names", "policy_choices",
    "scorer_names",
    "ATTENTION_QUERIES", "ATTENTION_SHARPNESS", "HUB_ID", "MIN_SCALE", "POLICY_NAMES",
    "PROBE_BUDGET", "PRUNE", "QUERY_HEAD_SHARE", "RESIZE", "SELECT", "THUMB_SIDE",
    "AllocationContext", "Attention", "Content", "InApp", "Keyframes", "Learned", "Operator",
    "Policy", "PolicyOptions", "ProbeCost", "Prune", "Random", "Uniform", "Vanilla",
    "allocator_inputs", "attention_scales", "check_allocator_path", "check_fit",
    "describe_policies", "make_policy", "policy_class", "policy_names", "query_window",
    "register_policy", "unregister_policy",
]  # fmt: skip


def __getattr__(name: str):
    """``POLICY_NAMES``: the registered names at the time it is read (:func:`policy_names`)."""
    if name == "POLICY_NAMES":
        return policy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
