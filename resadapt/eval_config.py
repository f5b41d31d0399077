"""The evaluation's config: the policies, budgets and frame counts `python -m resadapt.eval` runs.

Owns ``EvalConfig`` (every ``python -m resadapt.eval`` flag), the policy and budget specs and their
parsing. Knows nothing about running the grid (:mod:`resadapt.eval`) or reporting its results
(:mod:`resadapt.report`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from resadapt.cli import default_of, option
from resadapt.config import ENCODE_BUDGET, ModelConfig, Request
from resadapt.data import DataConfig
from resadapt.errors import (
    BudgetError,
    PolicyError,
    ResAdaptError,
)
from resadapt.policies import (
    COMPOSE,
    SELECT_SIZES,
    check_allocator_path,
    combination_names,
    policy_class,
    policy_names,
    scorer_names,
)
from resadapt.video import MAX_SAMPLED_FRAMES

DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
"""Retention budgets evaluated when neither --budgets nor --max-visual-tokens is given."""
MAX_BATCH_SIZE = 256
"""Most examples answered in one backbone batch."""


@dataclass(frozen=True)
class PolicySpec:
    """One entry of ``--policies``: a policy name, and the allocator folder for ``learned``."""

    name: str
    allocator: str | None = None
    label: str = ""
    """Name in rows and plots: the policy name, or ``learned:PATH`` when several are compared,
    followed by ``@E`` for an ``--encode-budgets`` point."""
    encode_budget: float | None = None
    """``scorer+…+prune``: the tower's share of the full-resolution tokens (None: the default)."""


@dataclass(frozen=True)
class Budget:
    """One budget point: a retention, an absolute token cap, or neither (vanilla)."""

    retention: float | None = None
    max_visual_tokens: int | None = None

    @property
    def label(self) -> str:
        if self.retention is not None:
            return f"{self.retention:g}"
        if self.max_visual_tokens is not None:
            return f"{self.max_visual_tokens} tokens"
        return "-"


def parse_policies(text: str) -> tuple[PolicySpec, ...]:
    """``vanilla,uniform,learned:PATH,learned+prune`` → specs; raises PolicyError naming a bad
    entry (a combination the registry refuses: its one sentence)."""
    names = policy_names()
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise PolicyError(f"--policies lists no policy; choose from {', '.join(names)}")
    takers = [n for n in names if policy_class(n).needs_allocator]
    parsed = []
    for entry in entries:
        name, _, path = entry.partition(":")
        if COMPOSE in name:
            policy_class(name)  # PolicyError: the combination's own refusal
        elif name not in names:
            raise PolicyError(
                f"unknown policy {name!r} in --policies; choose from {', '.join(names)}"
            )
        if path and not policy_class(name).needs_allocator:
            raise PolicyError(
                f"only {' or '.join(takers)} (and its combinations) takes an allocator path "
                f"({' or '.join(n + ':PATH' for n in takers)}), got {entry!r}"
            )
        parsed.append((name, path or None))
    if len(set(parsed)) < len(parsed):
        raise PolicyError(f"--policies lists a policy twice: {text!r}")
    count = Counter(name for name, _ in parsed)  # several of a name: labelled by their paths
    return tuple(
        PolicySpec(name, path, f"{name}:{path}" if path and count[name] > 1 else name)
        for name, path in parsed
    )


def _policies_help() -> str:
    """``--policies``' help, from the registry when a parser is built."""
    names = [f"{n}[:PATH]" if policy_class(n).needs_allocator else n for n in policy_names()]
    return (
        f"comma list of {', '.join(names)} (learned without a path uses --allocator: "
        "$RESADAPT_ALLOCATOR, else the bundled allocator when it matches the backbone)"
    )


def _operators(text: str) -> tuple[str, ...]:
    """``--operators``: operator chains (``resize``, ``select``, ``prune``, ``select+prune``)."""
    chains = tuple(c.strip() for c in text.split(",") if c.strip())
    for chain in chains:
        if chain != OWN_OPERATOR:
            policy_class(COMPOSE.join(("learned", chain)))  # PolicyError naming the chains
    return chains


OWN_OPERATOR = "resize"
"""``--operators`` entry for each policy as named (a scorer's own operator)."""


def with_operators(
    specs: tuple[PolicySpec, ...], chains: tuple[str, ...], encode_budgets: tuple[float, ...]
) -> tuple[PolicySpec, ...]:
    """The grid's policies: every scorer of ``specs`` followed by every operator chain that makes
    a combination (:func:`combination_names`: vanilla and uniform only with prune; a policy that
    is no scorer, or a combination already, is kept as named), and every one whose tower spends
    the encode cap at every encode budget (labelled ``name@E``). Repeats are dropped."""
    out: dict[tuple, PolicySpec] = {}
    combinations = combination_names()
    for spec in specs:
        names = [spec.name]
        if chains and spec.name in scorer_names():
            own = (
                OWN_OPERATOR in chains or not policy_class(spec.name).capped
            )  # vanilla: the reference
            names = [spec.name] if own else []
            names += [n for c in chains if (n := COMPOSE.join((spec.name, c))) in combinations]
            names = names or [spec.name]
        for name in names:
            prefix = spec.label.replace(spec.name, name, 1)
            encodes = policy_class(name).operator.spends_encode_cap
            for e in encode_budgets if encodes and encode_budgets else (None,):
                label = prefix if e is None else f"{prefix}@{e:g}"
                out.setdefault(
                    (name, spec.allocator, e), PolicySpec(name, spec.allocator, label, e)
                )
    return tuple(out.values())


def _budgets(text: str) -> tuple[float | None, ...]:
    """``--budgets``: retentions, and ``none`` for the policy's own allocation (no cap)."""
    values: list[float | None] = []
    for item in (s.strip() for s in text.split(",")):
        try:
            values.append(None if item.lower() == "none" else float(item))
        except ValueError as e:
            raise BudgetError(f"--budgets takes comma-separated numbers, got {item!r}") from e
    return tuple(values)


def _unique(values: tuple) -> tuple:
    """``values`` in order, repeats dropped."""
    return tuple(dict.fromkeys(values))


@dataclass(kw_only=True)
class EvalConfig(DataConfig, ModelConfig):
    """The evaluation grid and run settings, the data and the models (every field is a CLI flag)."""

    out: str = option("output folder for results.json/.csv, records.jsonl and frontier.png")
    policies: tuple[PolicySpec, ...] = option(
        _policies_help,
        parse_policies("vanilla,uniform,content,random"),
        parse=parse_policies,
    )
    operators: tuple[str, ...] = option(
        "comma list of operator chains applied to every scorer of --policies: resize (the policy "
        "as named), select, prune, select+prune; e.g. --policies learned,uniform --operators "
        "resize,prune (default: the policies as named)",
        (),
        parse=_operators,
    )
    encode_budgets: tuple[float, ...] = option(
        "comma list of encode budgets in (0, 1]: every SCORER+prune and SCORER+select+prune "
        f"policy runs at each (rows labelled NAME@E; default: --encode-budget's {ENCODE_BUDGET:g})",
        (),
    )
    select_sizes: str = option(
        "SCORER+select: kept chunks at full resolution or at their own scales",
        default_of(Request, "select_sizes"),
        choices=SELECT_SIZES,
    )
    budgets: tuple[float | None, ...] = option(
        "comma list of retention budgets in (0, 1], and none for each policy's own allocation "
        "without a cap (default: 0.1,0.25,0.5 unless --max-visual-tokens is given)",
        (),
        parse=_budgets,
    )
    max_visual_tokens: tuple[int, ...] = option(
        "comma list of absolute visual-token caps, evaluated as extra budget points", ()
    )
    frames: tuple[int, ...] = option(
        "comma list of frame counts; each is decoded once per video and evaluated "
        "(default: sample by --fps)",
        (),
    )
    fps: float = option(
        "frames sampled per second when --frames is not given", default_of(Request, "fps")
    )
    limit: int | None = option("evaluate only the first N valid rows", None)
    batch_size: int = option(
        "examples decoded and allocated together per policy × budget; the backbone answers them "
        "in micro-batches under --max-batch-tokens",
        8,
    )
    max_new_tokens: int = option("longest answer, in tokens", default_of(Request, "max_new_tokens"))
    seed: int = option(
        "seed of the random policy (each example draws from (seed, its index))",
        default_of(Request, "seed"),
    )
    scale: float = option(
        "scale of the uniform policy before budget fitting", default_of(Request, "scale")
    )
    probe_budget: float = option(
        "visual tokens of the attention policy's probe pass, as a share of the full-resolution "
        "tokens",
        default_of(Request, "probe_budget"),
    )
    probe_layers: int | None = option(
        "language-model layers of the attention policy's probe pass (none: all)",
        default_of(Request, "probe_layers"),
    )
    contextual_share: float = option(
        "share of the prune policy's kept visual tokens that are contextual (merged) tokens",
        default_of(Request, "contextual_share"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.budgets = _unique(self.budgets)
        self.max_visual_tokens = _unique(self.max_visual_tokens)
        self.frames = _unique(self.frames)
        self.encode_budgets = _unique(self.encode_budgets)
        for e in self.encode_budgets:
            if not 0 < e <= 1:
                raise BudgetError(f"--encode-budgets: a share must be in (0, 1], got {e:g}")
        self.policies = with_operators(self.policies, self.operators, self.encode_budgets)
        if not self.budgets and not self.max_visual_tokens:
            self.budgets = DEFAULT_BUDGETS
        for r in self.budgets:
            if r is not None and not 0 < r <= 1:
                raise BudgetError(f"--budgets: a retention must be in (0, 1], got {r:g}")
        for n in self.max_visual_tokens:
            if n <= 0:
                raise BudgetError(f"--max-visual-tokens: a cap must be positive, got {n}")
        for n in self.frames:
            if not 1 <= n <= MAX_SAMPLED_FRAMES:
                raise BudgetError(
                    f"--frames: a count must be in [1, {MAX_SAMPLED_FRAMES}], got {n}"
                )
        if self.video_root is not None and self.benchmark is None:
            raise ResAdaptError(f"--video-root {self.video_root} needs --benchmark")
        if self.limit is not None and self.limit < 1:
            raise BudgetError(f"--limit must be at least 1, got {self.limit}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise BudgetError(
                f"--batch-size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}"
            )
        # fps, max_new_tokens and scale are checked where they are used (Request, the policies);
        # building one request here turns a bad value into an error before anything loads.
        Request(
            question="?",
            fps=self.fps,
            max_new_tokens=self.max_new_tokens,
            probe_budget=self.probe_budget,
            probe_layers=self.probe_layers,
            contextual_share=self.contextual_share,
            select_sizes=self.select_sizes,
        )
        if not 0 < self.scale <= 1:
            raise BudgetError(f"--scale must be in (0, 1], got {self.scale}")
        for spec in self.policies:
            if spec.allocator:
                check_allocator_path(spec.allocator)

    @property
    def budget_points(self) -> tuple[Budget, ...]:
        """Retention budgets first, then token caps, in the order given."""
        return tuple(Budget(retention=r) for r in self.budgets) + tuple(
            Budget(max_visual_tokens=n) for n in self.max_visual_tokens
        )

    @property
    def frame_counts(self) -> tuple[int | None, ...]:
        """Requested frame counts; (None,) means sampling by ``fps``."""
        return self.frames or (None,)

    def frames_label(self, frames: int | None) -> int | str:
        """What rows carry as ``frames``: the count, or e.g. ``"2 fps"``."""
        return frames if frames is not None else f"{self.fps:g} fps"

    def settings(self) -> list[tuple[PolicySpec, Budget]]:
        """The (policy, budget) grid of one frame count: vanilla once, others at every budget."""
        grid = []
        for spec in self.policies:
            points = self.budget_points if policy_class(spec.name).capped else (Budget(),)
            grid += [(spec, b) for b in points]
        return grid

    def to_json(self) -> dict:
        values = asdict(self)
        values["policies"] = [
            f"{p.name}:{p.allocator}" if p.allocator else p.name for p in self.policies
        ]
        return values
