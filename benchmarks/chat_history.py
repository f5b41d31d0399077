"""Whether a chat's earlier turns as text change the answers: `--history text` vs `none`.

``python -m benchmarks.chat_history --data DATA.jsonl [--budget 0.15] [--backbone B]``

For every clip of a data file (``python -m resadapt.synth`` writes one): turn 1 asks the previous
row's question about this clip, turn 2 asks the clip's own question, both through
:class:`resadapt.chat.Chat` at the budget, once with each history mode. Prints how many turn-2
answers are identical across the two modes and how many are right in each.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import resadapt.world  # noqa: F401 (an entry point: registers the tiny backbones by name)
from resadapt import cli
from resadapt.chat import HISTORY_MODES, Chat, Turn
from resadapt.config import ModelConfig, Request
from resadapt.data import read_examples
from resadapt.pipeline import load_pipeline


@dataclass
class HistoryConfig:
    """The clips and the budget of the comparison (the models are a ModelConfig)."""

    data: str = cli.option("data.jsonl of the clips (e.g. written by python -m resadapt.synth)")
    budget: float = cli.option("retention of every turn", 0.15)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = cli.parse(
            argv,
            HistoryConfig,
            ModelConfig,
            prog="python -m benchmarks.chat_history",
            description=__doc__.splitlines()[0],
        )
        config = cli.make(HistoryConfig, args)
        pipeline = load_pipeline(cli.make(ModelConfig, args))
        print(measure(pipeline, config))

    return cli.run(body)


def measure(pipeline, config: HistoryConfig) -> str:
    """Run both modes over the clips; one summary line."""
    rows, _ = read_examples(config.data)
    chats = {mode: Chat(pipeline, history=mode) for mode in HISTORY_MODES}
    right = dict.fromkeys(HISTORY_MODES, 0)
    identical = 0
    for i, row in enumerate(rows):
        earlier = rows[i - 1].prompt()
        answers = {}
        for mode, chat in chats.items():
            first = chat.turn(row.video, Request(question=earlier, budget=config.budget))
            turns = [Turn(earlier, first.answer)]
            own = Request(question=row.prompt(), budget=config.budget)
            answers[mode] = chat.turn(row.video, own, turns).answer
            right[mode] += answers[mode].strip() == row.gold()
        identical += len(set(answers.values())) == 1
    n = len(rows)
    scores = ", ".join(f"right with {mode} {right[mode]}/{n}" for mode in HISTORY_MODES)
    return f"clips {n}; turn-2 answers identical across history modes: {identical}/{n}; {scores}"


if __name__ == "__main__":
    sys.exit(main())
