"""The evaluator's report: per-cell totals, summary rows, printed tables and frontier plots.

Owns ``Summary`` (running totals per frames × policy × budget cell and per task), the row columns
of ``results.json`` / ``results.csv``, ``format_table`` / ``format_task_table`` (the printed
tables), ``plot_frontier`` (``frontier.png``, ``frontier_<task>.png``; ``frontier_best.png``: the
best of each family, :func:`family`, when a family has several members) and ``write_outputs``. Knows
nothing about running the grid, decoding, policies or the backbone: it reads the per-example
records :mod:`resadapt.eval` yields.

Contract: accuracy = mean grade (resadapt.grading: 0/1, or temporal IoU) over a row's examples;
a row's means are over the examples that fit its budget (None when none did), and the examples
left out are counted by reason (``ResAdaptError.reason``).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from resadapt.benchmark_readers import Breakdown
from resadapt.eval_config import Budget, EvalConfig
from resadapt.policies import ALIASES, COMPOSE, Vanilla

ROW_COLUMNS = (
    "policy",
    "budget",
    "max_visual_tokens",
    "frames",
    "examples",
    "over_budget",
    "unreadable",
    "too_many_chunks",
    "rejected",
    "accuracy",
    "mean_retention",
    "mean_probe_visual_tokens",
    "mean_retention_with_probe",
    "mean_visual_tokens",
    "mean_scale_spread",
    "mean_latency_s",
    "mean_e2e_s",
)
"""Columns of results.csv (and keys of every row in results.json); means are empty (null) when
no example of the row fits its budget. The scale spread is the within-video standard deviation of
the fitted chunk scales (0: every chunk the same size); the probe columns are 0 and equal to the
retention for policies without a probe pass. over_budget, unreadable, too_many_chunks and rejected
count the examples left out of the row, by reason (``ResAdaptError.reason``)."""
TASK_COLUMNS = (
    "examples",
    "accuracy",
    "mean_retention",
    "mean_visual_tokens",
    "mean_scale_spread",
    "mean_e2e_s",
)
"""The columns a row repeats for each task (``by_task``), computed as the row's own."""
MARKERS = "osD^vPX"
"""Marker of each policy's line in frontier.png (vanilla is a star)."""


class Summary:
    """Running totals per (frames, policy, budget) cell; ``rows()`` in grid order.

    ``tasks``: the examples' tasks; with two or more, each cell also keeps totals per task.
    """

    def __init__(self, config: EvalConfig, tasks: tuple[str, ...] = ()):
        self.config = config
        self.tasks = tasks if len(tasks) > 1 else ()
        self.task_cells: dict[tuple, dict[str, Counter]] = {}
        self.cells: dict[tuple, Counter] = {}
        self.breakdowns: dict[tuple, Breakdown] = {}
        """Per-category totals of each cell when --benchmark is given."""
        for frames in config.frame_counts:
            for spec, budget in config.settings():
                label = config.frames_label(frames)
                key = (label, spec.label, budget.retention, budget.max_visual_tokens)
                self.cells[key] = Counter()
                if self.tasks:
                    self.task_cells[key] = {t: Counter() for t in self.tasks}
                if config.benchmark is not None:
                    self.breakdowns[key] = Breakdown(config.benchmark)

    def add(self, record: dict) -> None:
        key = (record["frames"], record["policy"], record["budget"], record["max_visual_tokens"])
        if key in self.breakdowns:
            self.breakdowns[key].add(record)
        _accumulate(self.cells[key], record)
        if key in self.task_cells and record.get("task") in self.task_cells[key]:
            _accumulate(self.task_cells[key][record["task"]], record)

    def rows(self) -> list[dict]:
        rows = []
        for key, cell in self.cells.items():
            frames, policy, budget, cap = key
            head = {"policy": policy, "budget": budget, "max_visual_tokens": cap, "frames": frames}
            rows.append(head | _means(cell))
            if self.breakdowns:
                rows[-1]["benchmark"] = self.breakdowns[key].columns()
            if self.task_cells:
                rows[-1]["by_task"] = {
                    task: {c: _means(counts)[c] for c in TASK_COLUMNS}
                    for task, counts in self.task_cells[key].items()
                }
        return rows


def _accumulate(cell: Counter, record: dict) -> None:
    """Add one record to a cell's running totals."""
    cell[record["status"]] += 1
    if record["status"] == "ok":
        cell["correct"] += record["correct"]
        cell["retention"] += record["retention"]
        cell["probe_visual_tokens"] += record["probe_visual_tokens"]
        cell["retention_with_probe"] += record["retention_with_probe"]
        cell["visual_tokens"] += record["visual_tokens"]
        cell["scale_spread"] += float(np.std(record["scales"]))
        cell["latency_s"] += record["latency_s"]
        cell["e2e_s"] += record["e2e_s"]


def _means(cell: Counter) -> dict:
    """A cell's counts and means (ROW_COLUMNS after the row's key); a mean is None when no
    example fitted the budget."""
    n = cell["ok"]

    def mean(key: str) -> float | None:
        return cell[key] / n if n else None

    return {
        "examples": n,
        "over_budget": cell["over_budget"],
        "unreadable": cell["unreadable"],
        "too_many_chunks": cell["too_many_chunks"],
        "rejected": cell["rejected"],
        "accuracy": mean("correct"),
        "mean_retention": mean("retention"),
        "mean_probe_visual_tokens": mean("probe_visual_tokens"),
        "mean_retention_with_probe": mean("retention_with_probe"),
        "mean_visual_tokens": mean("visual_tokens"),
        "mean_scale_spread": mean("scale_spread"),
        "mean_latency_s": mean("latency_s"),
        "mean_e2e_s": mean("e2e_s"),
    }


ROW_CELLS = (("accuracy", 8, ".3f"), ("mean_retention", 9, ".3f"))
ROW_CELLS += (("mean_retention_with_probe", 7, ".3f"), ("mean_visual_tokens", 8, ".1f"))
ROW_CELLS += (("mean_scale_spread", 6, ".3f"), ("mean_latency_s", 8, ".3f"))
"""(key, width, format) of the numbers of a ``format_table`` row; seconds end in "s"."""
TASK_CELLS = ROW_CELLS[:2] + (("mean_scale_spread", 6, ".3f"), ("mean_e2e_s", 8, ".3f"))
"""The same for one task's part of a row in ``format_task_table``."""


def _cells(stats: dict, cells: tuple[tuple[str, int, str], ...]) -> str:
    """The right-aligned numbers of ``stats`` (dashes without examples); ``*_s`` keys end in "s"."""
    out = []
    for key, width, spec in cells:
        if not stats["examples"]:
            out.append(f"{'-':>{width}}")
        else:
            seconds = key.endswith("_s")
            out.append(f"{stats[key]:>{width - seconds}{spec}}" + "s" * seconds)
    return " ".join(out)


ROW_HEAD = f"{'policy':<12} {'budget':>10} {'frames':>6} "
"""The first columns of both printed tables: a row's key."""


def _row_key(row: dict) -> str:
    """A row's policy, budget and frames, aligned under :data:`ROW_HEAD`."""
    budget = Budget(row["budget"], row["max_visual_tokens"]).label
    return f"{row['policy']:<12} {budget:>10} {row['frames']!s:>6} "


def _ruled(head: str) -> list[str]:
    """A table's header line and the rule under it."""
    return [head, "-" * len(head)]


def format_table(rows: list[dict]) -> str:
    """The rows as a compact fixed-width table (one line per policy × budget × frame count)."""
    lines = _ruled(
        ROW_HEAD + f"{'n':>4} {'accuracy':>8} {'retention':>9} {'+probe':>7} {'tokens':>8} "
        f"{'spread':>6} {'latency':>8}"
    )
    lines += [_row_key(r) + f"{r['examples']:>4} " + _cells(r, ROW_CELLS) for r in rows]
    lines.append("+probe: retention counting the attention policy's probe pass")
    if any(not r["examples"] for r in rows):
        lines.append(
            "n = 0: no example fits that budget (even at the smallest size per chunk; keyframes: "
            "not one full-resolution chunk)"
        )
    return "\n".join(lines)


def format_task_table(rows: list[dict]) -> str:
    """Each row's numbers per task (rows with ``by_task`` only): accuracy, retention, scale spread
    and end-to-end seconds of each task's examples."""
    lines = _ruled(
        ROW_HEAD + f"{'task':<10} {'n':>4} {'accuracy':>8} {'retention':>9} {'spread':>6} "
        f"{'e2e':>8}"
    )
    lines += [
        _row_key(r) + f"{task:<10} {t['examples']:>4} " + _cells(t, TASK_CELLS)
        for r in rows
        for task, t in r.get("by_task", {}).items()
    ]
    return "\n".join(lines)


def plot_frontier(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy (y) against mean retention (x, top row) and against mean end-to-end seconds per
    example (x, bottom row): one line per policy, one column per frame count.

    Vanilla is a single marker. Rows without examples are not drawn.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    frame_labels = list(dict.fromkeys(r["frames"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig = Figure(figsize=(5.5 * len(frame_labels), 8.4), layout="constrained")
    grid = fig.subplots(2, len(frame_labels), squeeze=False)
    for ax, frames, x_key in [
        (grid[0][i], f, "mean_retention") for i, f in enumerate(frame_labels)
    ] + [(grid[1][i], f, "mean_e2e_s") for i, f in enumerate(frame_labels)]:
        for i, policy in enumerate(policies):
            points = [  # in retention order, so a line follows the budgets in both rows
                (r[x_key], r["accuracy"])
                for r in sorted(rows, key=lambda r: r["mean_retention"] or 0.0)
                if r["frames"] == frames and r["policy"] == policy and r["examples"]
            ]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            style = {"color": f"C{i}", "label": policy}
            if policy == Vanilla.name:
                ax.plot(x, y, linestyle="none", marker="*", markersize=14, **style)
            else:
                ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], alpha=0.85, **style)
        if x_key == "mean_retention":
            ax.set_xlabel("mean retention (share of full-resolution visual tokens)")
            ax.set_xlim(0, 1.05)
        else:
            ax.set_xlabel("mean end-to-end seconds per example (decode to answer)")
            ax.set_xlim(left=0)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        frames_text = f"{frames} frames" if isinstance(frames, int) else f"frames at {frames}"
        ax.set_title(f"{title}, {frames_text}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=120)


def family(label: str) -> str:
    """A row's family: its scorer (``learned`` for learned, learned+select, learned+prune:PATH@E,
    ...; ``attention`` for keyframes), except that vanilla+prune is ``prune``."""
    name = label.split(":")[0].split("@")[0]
    name = {alias: combo for combo, alias in ALIASES.items()}.get(name, name)
    scorer = name.split(COMPOSE)[0]
    return "prune" if scorer == Vanilla.name and COMPOSE in name else scorer


def best_of_families(rows: list[dict]) -> list[dict]:
    """One row per (frames, family, budget): the family's most accurate row there (ties: the first
    in grid order), its policy replaced by ``family (policy)`` of the winner."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if not r["examples"]:
            continue
        key = (r["frames"], family(r["policy"]), r["budget"], r["max_visual_tokens"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    out = []
    for (_, fam, *_), r in best.items():
        out.append(r | {"policy": fam, "best_of": r["policy"]})
    return out


def write_outputs(out: Path, config: EvalConfig, backbone: str, rows: list[dict], skipped) -> None:
    """results.json, results.csv, frontier.png (and frontier_<task>.png) in ``out``."""
    meta = {"backbone": backbone, "config": config.to_json(), "skipped_rows": dict(skipped)}
    (out / "results.json").write_text(json.dumps(meta | {"rows": rows}, indent=2) + "\n")
    flat = [
        {k: v for k, v in r.items() if k not in ("benchmark", "by_task")}
        | r.get("benchmark", {})
        | {f"{task}_{c}": v for task, t in r.get("by_task", {}).items() for c, v in t.items()}
        for r in rows
    ]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)
    plot_frontier(rows, out / "frontier.png", f"{Path(backbone).name}")
    families = {family(r["policy"]) for r in rows}
    if len(families) < len({r["policy"] for r in rows}):  # some family has several members
        name = f"{Path(backbone).name}, best of each family"
        plot_frontier(best_of_families(rows), out / "frontier_best.png", name)
    tasks = dict.fromkeys(task for r in rows for task in r.get("by_task", {}))
    for task in tasks if len(tasks) > 1 else ():
        task_rows = [r | r["by_task"][task] for r in rows if task in r.get("by_task", {})]
        plot_frontier(task_rows, out / f"frontier_{task}.png", f"{Path(backbone).name}, {task}")
