"""lmms-eval model ``resadapt``: our pipeline (any policy and budget) behind lmms-eval's interface.

Owns the translation of lmms-eval requests (``Instance`` objects) into pipeline requests and of
model_args into our flags; registered through the ``lmms_eval.models`` entry point
(:func:`manifest`). Knows nothing about lmms-eval's tasks or metrics.

Run (after ``pip install -e .[lmms]``)::

    lmms-eval --model resadapt --model_args backbone=PATH,policy=learned,budget=0.15 \\
        --tasks videomme --batch_size 4

model_args are the flags of ``python -m resadapt.ask`` without the question (``policy``,
``budget``, ``max_visual_tokens``, ``frames``, ``fps``, ``scale``, ``seed``, ``max_new_tokens``,
``backbone``, ``allocator``, ``dtype``, ``device``, ``max_pixels``), parsed by the same layer.

Contract:
  * The pipeline decodes each video file itself (true timestamps, so the backbone sees the real
    sampling fps and every chunk at its own allocated size); lmms-eval's frame subsampling is never
    used. A request's visuals must be one video path.
  * ``generate_until``: greedy; a task's ``max_new_tokens`` (capped at MAX_NEW_TOKENS) and
    ``until`` stop strings apply. ``loglikelihood``: ``log p(continuation | video, context)`` and
    whether greedy decoding would produce it, from one teacher-forced forward pass.
    ``generate_until_multi_round``: one pipeline answer per round, the task's ``doc_to_text``
    supplying each next context.
  * A request the pipeline refuses (unreadable video, question too long, budget below the smallest
    size) is answered with an empty string (log-likelihood ``-inf``) and logged, never fatal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import fields

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelManifest
except ImportError as e:  # the module is only imported by lmms-eval, or by a user who wants it
    raise ImportError(
        "resadapt.lmms needs lmms-eval; install it with pip install -e .[lmms]"
    ) from e

import torch

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from resadapt import cli
from resadapt.config import MAX_NEW_TOKENS, ModelConfig, Request
from resadapt.errors import ResAdaptError

logger = logging.getLogger(__name__)

MODEL_ID = "resadapt"
"""Name of the model in lmms-eval (``--model resadapt``)."""
MAX_ROUNDS = 16
"""Most rounds of one generate_until_multi_round request (the task's doc_to_text ends sooner)."""


def manifest() -> ModelManifest:
    """The entry point's payload: lmms-eval registers ``resadapt`` as a simple model."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path="resadapt.lmms.ResAdaptLMM")


def _argv(model_args: dict) -> list[str]:
    """model_args as our command line (``budget=0.15`` → ``--budget 0.15``)."""
    argv = []
    for key, value in model_args.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


class ResAdaptLMM(lmms):
    """ResAdapt's pipeline as an lmms-eval simple model (video in, text out)."""

    is_simple = True

    def __init__(self, batch_size: int | str = 1, max_batch_size: int | None = None, **model_args):
        super().__init__()
        args = cli.parse(
            _argv(model_args),
            ModelConfig,
            Request,
            exclude=("question",),
            prog="lmms-eval --model resadapt --model_args",
            description="ResAdapt in lmms-eval",
        )
        from resadapt.pipeline import load_pipeline

        self.settings = {f.name: getattr(args, f.name) for f in fields(Request)[1:]}  # no question
        Request(question="?", **self.settings)  # a bad value fails here, before loading
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1
        self.pipeline = load_pipeline(cli.make(ModelConfig, args))

    # ------------------------------------------------------------------ helpers
    def _request(self, context: str, gen_kwargs: dict | None = None) -> Request:
        """The pipeline request of one lmms-eval context (its max_new_tokens capped)."""
        settings = dict(self.settings)
        wanted = (gen_kwargs or {}).get("max_new_tokens")
        if wanted is not None:
            settings["max_new_tokens"] = max(1, min(int(wanted), MAX_NEW_TOKENS))
        return Request(question=context.replace("<image>", "").strip(), **settings)

    def _video(self, doc_to_visual, doc_id, task: str, split: str) -> str:
        """The request's one video path (lmms-eval's doc_to_visual gives a list)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        paths = [v for v in visuals if isinstance(v, str)] if visuals else []
        if len(paths) != 1 or len(visuals) != 1:
            kinds = ", ".join(type(v).__name__ for v in visuals or []) or "nothing"
            raise ResAdaptError(
                f"resadapt answers about one video file; task {task} gave {kinds} (doc {doc_id})"
            )
        return paths[0]

    def _prepared(self, items: list[tuple[str, Request]]) -> Iterator[tuple]:
        """(index, chunked video, request, allocation) of every item the pipeline accepts (others
        logged)."""
        for i, (path, request) in enumerate(items):
            try:
                video = self.pipeline.decode(path, request)
                allocation = self.pipeline.allocate(video, request)
            except ResAdaptError as err:
                logger.warning("resadapt: request %d refused: %s", i, err)
                continue
            yield i, self.pipeline.chunked(video, allocation), request, allocation

    def _answers(self, items: list[tuple[str, Request]]) -> list[str]:
        """Greedy answers of (video, request) items: ``batch_size`` requests of the same
        max_new_tokens at a time, in micro-batches under the backbone's token budget; a refused
        request's answer is empty."""
        answers = [""] * len(items)
        groups: dict[int, list] = {}
        for ready in self._prepared(items):
            groups.setdefault(ready[2].max_new_tokens, []).append(ready)
        backbone = self.pipeline.backbone
        for max_new_tokens, group in groups.items():
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                videos, questions = [c for _, c, *_ in batch], [r.question for _, _, r, _ in batch]
                for index, inputs in backbone.batches(videos, questions):  # under the token budget
                    # the language model's inputs: pruned after the tower for a pruning policy
                    inputs = self.pipeline.encode(inputs, [batch[b][3] for b in index])
                    texts = backbone.generate(inputs, max_new_tokens)
                    for b, text in zip(index, texts, strict=True):
                        answers[batch[b][0]] = text
        return answers

    # ------------------------------------------------------------------ lmms interface
    def generate_until(self, requests: list[Instance]) -> list[str]:
        items, stops = [], []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            until = gen_kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            path = self._video(doc_to_visual, doc_id, task, split)
            items.append((path, self._request(context, gen_kwargs)))
        out = []
        for text, until in zip(self._answers(items), stops, strict=True):
            for stop in filter(None, until):
                text = text.split(stop)[0]
            out.append(text)
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        items, continuations = [], []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if not isinstance(continuation, str):  # doc_to_target given as a callable
                continuation = str(continuation(self.task_dict[task][split][doc_id]))
            items.append((self._video(doc_to_visual, doc_id, task, split), self._request(context)))
            continuations.append(continuation)
        results = [(-math.inf, False)] * len(items)
        for i, chunked, request, allocation in self._prepared(items):
            results[i] = self._score(chunked, allocation, request.question, continuations[i])
        return results

    @torch.no_grad()
    def _score(self, chunked, allocation, question: str, continuation: str) -> tuple[float, bool]:
        """Sum of log p(continuation tokens) after the question, and whether each is the argmax."""
        backbone = self.pipeline.backbone
        inputs = backbone.prepare([chunked], [question], [continuation])  # ends with end-of-turn
        inputs = self.pipeline.encode(inputs, [allocation])  # pruned after the tower for prune
        n = backbone.answer_length(continuation) - 1  # the continuation's tokens, not end-of-turn
        logits = backbone.model(**inputs).logits[0].float()  # (L, V)
        target = inputs["input_ids"][0, -n - 1 : -1]  # (n,)
        logp = torch.log_softmax(logits[-n - 2 : -2], dim=-1)  # (n, V) position t predicts t + 1
        total = float(logp.gather(-1, target[:, None]).sum())
        return total, bool((logp.argmax(-1) == target).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        out = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            path = self._video(doc_to_visual, doc_id, task, split)
            rounds: list[str] = []
            info = None
            for round_idx in range(MAX_ROUNDS):
                if round_idx > 0:
                    _, context, done, rounds, info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_idx,
                        previous_round_info=info,
                    )  # fmt: skip
                    rounds = list(rounds)
                    if done:
                        break
                (answer,) = self._answers([(path, self._request(context, gen_kwargs))])
                rounds.append(answer)
            out.append(rounds)
        return out
