"""The tiny backbone's training losses: the answer's language-model loss and the auxiliary
targets that make a from-scratch Qwen2.5-VL read small evidence and bind the question to it.

Owns the linear probes (:class:`TokenHeads`) and every loss term of one batch
(:func:`batch_losses`): card presence, per-token card colour and per-chunk grating class on the
vision tower's tokens; the question's colour and the count on the language model's state at the
answer position; head ``bind_layer``'s attention on the queried card. Knows nothing about the
schedule, the optimiser or checkpoints (:mod:`resadapt.world.recipe`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from resadapt.backbone import Backbone
from resadapt.world.clips import Clip, chunked_video, example_of
from resadapt.world.synth import COLOUR_NAMES, COUNT_RANGE, ORIENTATIONS


class TokenHeads(nn.Module):
    """Linear probes: on merged visual tokens, card colour or none (7 ways), grating class (4) and
    whether the token's chunk shows a card (1 logit); on the language model's state at the answer
    position, the question's colour (7 ways) and, for count questions, the count (4 ways).
    """

    def __init__(
        self,
        width: int,
        text_width: int,
        colour_words: tuple[nn.Embedding, list[int]] | None = None,
    ):
        super().__init__()
        self.colour = nn.Linear(width, 1 + len(COLOUR_NAMES))
        self.label = nn.Linear(width, len(ORIENTATIONS))
        self.present = nn.Linear(width, 1)  # on every token: does my chunk show a card?
        self.count = nn.Linear(text_width, COUNT_RANGE[1] - COUNT_RANGE[0] + 1)
        self.question_colour = nn.Linear(text_width, 1 + len(COLOUR_NAMES))
        # Tied colour head: a token's colour logits are its dot products with the language
        # model's embeddings of the colour words (and a learned "no card" vector), so a visual
        # token and the question's colour word meet in one space. Kept out of the submodules so
        # the embedding stays owned (and optimised) by the model alone.
        self._words = colour_words
        if colour_words is not None:
            self.no_colour = nn.Parameter(torch.zeros(width))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._words is None:
            colour = self.colour(tokens)
        else:
            embedding, ids = self._words
            table = torch.cat([self.no_colour[None], embedding.weight[ids]])  # (7, D)
            colour = tokens @ table.T + self.colour.bias
        return colour, self.label(tokens)  # (N, 7), (N, 4)


def batch_losses(
    backbone: Backbone,
    heads: TokenHeads,
    clips: list[Clip],
    joint: bool,
    colour: bool = True,
    bind_layer: int = 2,
    presence_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(language-model loss, auxiliary loss, stats) of one batch.

    The auxiliary loss is the sum, in this order, of: card presence (times ``presence_weight``,
    when it is not 0), the card colour of every token (with ``colour``), the grating class of
    every chunk; with ``joint`` also the question's colour, the count (count rows) and the binding
    head's attention. Without ``joint`` the language-model loss is 0 and the language model does
    not run. ``stats``: each term's accuracy (the binding head's mean attention mass) where the
    term had rows.
    """
    model = backbone.model
    videos = [chunked_video(backbone, c, c.scales) for c in clips]
    examples = [example_of(c.sample) for c in clips]
    answers = [e.gold() for e in examples]
    inputs = backbone.prepare(videos, [e.prompt() for e in examples], answers)
    vision = model.model.get_video_features(
        inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
    )
    chunk_tokens = vision.pooler_output  # (n_k, D) per chunk, the clips' chunks in order
    full = full_size_targets(clips, chunk_tokens)
    aux = torch.zeros(())
    stats: dict = {}
    if presence_weight:
        bce, stats["present_acc"] = presence_loss(heads, clips, chunk_tokens)
        aux = aux + presence_weight * bce
    colours = card_colour_loss(heads, full) if colour else None
    if colours is not None:
        aux = aux + colours
    labels = chunk_label_loss(heads, full)
    if labels is not None:
        aux = aux + labels[0]
        stats["chunk_label_acc"] = labels[1]
    if not joint:
        return torch.zeros(()), aux, stats
    lengths = [backbone.answer_length(a) for a in answers]  # answer + end-of-turn tokens per row
    out = answer_forward(backbone, inputs, vision, lengths)
    last = inputs["input_ids"].shape[1] - 1 - torch.tensor(lengths)  # (B,) predicts the letter
    query_colour = query_colours(clips)  # (B,)
    loss, stats["query_colour_acc"] = question_colour_loss(
        heads, out.hidden_states[bind_layer], last, query_colour
    )
    aux = aux + loss
    counts = count_probe_loss(heads, clips, out.hidden_states[bind_layer + 1], last)
    if counts is not None:
        aux = aux + counts[0]
        stats["count_probe_acc"] = counts[1]
    binding = bind_attention_loss(
        backbone, clips, inputs, out.attentions[bind_layer], last, query_colour, chunk_tokens
    )
    if binding is not None:
        aux = aux + binding[0]
        stats["bind_attention"] = binding[1]
    return out.loss, aux, stats


# Auxiliary targets exist for full-size chunks (their token grid is the label grid): the card
# colour of every token, and the grating class of every chunk that shows a card, read from
# its max-pooled tokens. (Measured: a per-token grating loss stays at chance for hundreds of
# steps; the max-pooled one learns in under 100, as docs/results.md records.)
@dataclass
class FullSizeTargets:
    """The tokens and targets of a batch's full-size chunks, in the clips' chunk order."""

    tokens: list[torch.Tensor]
    """(n, D) the merged visual tokens of each full-size chunk."""
    colours: list[torch.Tensor]
    """(n,) the card colour under each of those tokens (0: no card)."""
    pooled: list[torch.Tensor]
    """(D,) the max-pooled tokens of each full-size chunk that shows a card."""
    classes: list[int]
    """The grating class of each of those chunks."""


def full_size_targets(clips: list[Clip], chunk_tokens) -> FullSizeTargets:
    """The full-size chunks' tokens and targets; chunk_tokens: (n_k, D) per chunk, clips' order."""
    full = FullSizeTargets([], [], [], [])
    items = [(clip, k) for clip in clips for k in range(len(clip.scales))]
    for (clip, k), tokens in zip(items, chunk_tokens, strict=True):
        if tokens.shape[0] == clip.colour_ids[k].size:  # (n, D) tokens of a full-size chunk
            full.tokens.append(tokens)
            full.colours.append(torch.from_numpy(clip.colour_ids[k].reshape(-1)))
            label = int(clip.label_ids[k].max())
            if label > 0:
                full.pooled.append(tokens.max(dim=0).values)
                full.classes.append(label - 1)
    return full


def card_colour_loss(heads: TokenHeads, full: FullSizeTargets) -> torch.Tensor | None:
    """Cross-entropy of the colour head on every token of the full-size chunks against the card
    colour under it; None without a full-size chunk."""
    if not full.tokens:
        return None
    colour_logits, _ = heads(torch.cat(full.tokens))  # (N, 7)
    return nn.functional.cross_entropy(colour_logits, torch.cat(full.colours))


def chunk_label_loss(heads: TokenHeads, full: FullSizeTargets) -> tuple[torch.Tensor, float] | None:
    """(cross-entropy, accuracy) of the grating head on the max-pooled tokens of every full-size
    chunk that shows a card; None without one."""
    if not full.pooled:
        return None
    _, label_logits = heads(torch.stack(full.pooled))  # (N, classes)
    target = torch.tensor(full.classes)
    loss = nn.functional.cross_entropy(label_logits, target)
    return loss, float((label_logits.argmax(-1) == target).float().mean())


def presence_loss(heads: TokenHeads, clips: list[Clip], chunk_tokens) -> tuple[torch.Tensor, float]:
    """(binary cross-entropy, accuracy) of the presence head on every token of every chunk at any
    size against "my chunk shows a card"."""
    # A count is then the share of visual tokens that say so, times the chunks, when every chunk
    # has the same size (uniform downscaling). Off in the main-only recipe.
    flags = np.concatenate([clip.present for clip in clips])  # (sum of K,) in the chunks' order
    sizes = torch.tensor([tokens.shape[0] for tokens in chunk_tokens])
    present = torch.from_numpy(flags).float().repeat_interleave(sizes)  # (N,)
    logits = heads.present(torch.cat(chunk_tokens))[:, 0]  # (N,)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, present)
    return bce, float(((logits.detach() > 0) == (present > 0.5)).float().mean())


def answer_forward(backbone: Backbone, inputs: dict, vision, lengths: list[int]):
    """The language model on the batch with its video features, every hidden state and attention
    returned; its loss is on the last ``lengths[b]`` tokens of row b (the answer)."""
    labels_lm = torch.full_like(inputs["input_ids"], -100)
    for b, n in enumerate(lengths):
        labels_lm[b, -n:] = inputs["input_ids"][b, -n:]
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos",)}
    return backbone.model(
        **rest,
        mm_encoder_outputs={"video": vision},
        labels=labels_lm,
        output_hidden_states=True,
        output_attentions=True,
    )


# Binding, taught as two hops (measured: a per-token "is the queried card" flag at the middle
# layer fired on every card, and accuracy with two cards stayed near 55-60 %):
#   1. the state of the position that predicts the letter, entering layer ``bind_layer``,
#      names the question's colour (a linear probe);
#   2. head 0 of that layer attends from there to the queried card's tokens (the loss is
#      -log of the attention mass on them), so the grating of that card is what reaches the
#      answer. Rows whose queried card is in a downscaled chunk have no target, and neither
#      have rows whose evidence spans several chunks (count): one head cannot be "the" pointer
#      to seven cards, and the answer there is a tally, not one card's grating.
def query_colours(clips: list[Clip]) -> torch.Tensor:
    """(B,) the colour each clip's question names: 1 + its index in COLOUR_NAMES, 0 for none."""
    return torch.tensor(
        [
            0 if s.task == "count" else 1 + COLOUR_NAMES.index(s.cards[s.query].colour)
            for s in (c.sample for c in clips)
        ]
    )


def question_colour_loss(
    heads: TokenHeads, states: torch.Tensor, last: torch.Tensor, query_colour: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """(cross-entropy, accuracy) of the question-colour probe (hop 1) on the state at ``last``.

    states: (B, L, D) the hidden states entering the binding layer; last, query_colour: (B,).
    """
    logits = heads.question_colour(states[torch.arange(len(last)), last])  # (B, 7)
    loss = nn.functional.cross_entropy(logits, query_colour)
    return loss, float((logits.detach().argmax(-1) == query_colour).float().mean())


def count_probe_loss(
    heads: TokenHeads, clips: list[Clip], states: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, float] | None:
    """(cross-entropy, accuracy) of the count probe on the count rows' state at ``last``: the same
    target as the language model's, nearer the visual tokens; None without a count row.

    states: (B, L, D) the hidden states after the binding layer; last: (B,).
    """
    counting = [b for b, c in enumerate(clips) if c.sample.task == "count"]
    if not counting:
        return None
    rows = torch.tensor(counting)
    after = states[rows, last[rows]]  # (C, D)
    count_logits = heads.count(after)  # (C, 4)
    target = torch.tensor([int(clips[b].sample.answer) - COUNT_RANGE[0] for b in counting])
    loss = nn.functional.cross_entropy(count_logits, target)
    return loss, float((count_logits.detach().argmax(-1) == target).float().mean())


def bind_attention_loss(
    backbone: Backbone,
    clips: list[Clip],
    inputs: dict,
    attentions: torch.Tensor,
    last: torch.Tensor,
    query_colour: torch.Tensor,
    chunk_tokens,
) -> tuple[torch.Tensor, float] | None:
    """(mean -log attention mass, mean mass) of head 0 (hop 2) from ``last`` on the queried card's
    tokens, over the rows whose evidence is one full-size chunk; None without such a row.

    attentions: (B, heads, L, L) of the binding layer; last, query_colour: (B,).
    """
    attention = attentions[torch.arange(len(clips)), 0, last]  # (B, L)
    is_video = inputs["input_ids"] == backbone.processor.video_token_id  # (B, L)
    tokens_of = iter(chunk_tokens)  # (n_k, D) per chunk, in the clips' order
    masses = []
    for b, clip in enumerate(clips):
        wanted, ok, evidence_chunks = [], True, 0
        for k in range(len(clip.scales)):
            n, shown = next(tokens_of).shape[0], clip.colour_ids[k] == int(query_colour[b])
            evidence_chunks += int(shown.any())
            if n == shown.size:
                wanted.append(torch.from_numpy(shown.reshape(-1)))
            else:
                ok = ok and not shown.any()
                wanted.append(torch.zeros(n, dtype=torch.bool))
        target = torch.cat(wanted)
        if ok and evidence_chunks == 1 and clip.sample.task != "count":
            masses.append(attention[b][is_video[b]][target].sum())
    if not masses:
        return None
    mass = torch.stack(masses)
    return (-torch.log(mass.clamp_min(1e-6))).mean(), float(mass.detach().mean())
