"""A conversation about one video: the decoded video kept, one allocation per turn, turns as text.

Owns the chat's turn records, the decode cache (keyed by the file's content hash and the sampling,
bounded in bytes), how earlier turns reach the backbone (``text``: as text turns before the
question, with the video once, in the last user turn, at this turn's allocation; ``none``: not at
all) and the run of one turn. Knows nothing about user interfaces (resadapt.chat_ui formats turns
for the app) nor about how a policy allocates (resadapt.pipeline).

Why the video is sent again at every turn: transformers' ``generate`` drops video inputs once a
key/value cache exists, so a follow-up that reuses the first turn's cache answers without the
video. Each turn therefore is one fresh prompt: its own allocation (the policy reads this turn's
question only), the earlier questions and answers as text.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from resadapt.cli import option
from resadapt.config import Request
from resadapt.errors import MAX_QUESTION_CHARS, ResAdaptError
from resadapt.pipeline import Pipeline
from resadapt.records import Result
from resadapt.video import SampledVideo

logger = logging.getLogger(__name__)

HISTORY_MODES = ("text", "none")
"""How earlier turns reach the backbone: as text turns, or not at all (each turn alone)."""
MAX_HISTORY_TURNS = 8
"""Most earlier turns kept as text context (the most recent ones): bounds the prompt's length."""
MAX_CACHE_BYTES = 1 << 30
"""Decoded frames the cache keeps, in bytes, over all its videos (least recently used leave
first; a video larger than this is decoded again at every turn)."""
MAX_CACHED_VIDEOS = 4
"""Decoded videos the cache keeps at most."""
MAX_TURN_CHARS = 8 * MAX_QUESTION_CHARS
"""Longest earlier turn (question and answer) accepted as context, in characters."""
HASH_BLOCK_BYTES = 1 << 20
"""Bytes read at a time while hashing a file."""

Decode = Callable[[str, Request], SampledVideo]
"""Samples a video file's frames for a request (``Pipeline.decode``, or the app's limited one)."""


class HistoryError(ResAdaptError):
    """A history mode or an earlier turn that cannot be used."""


@dataclass
class ChatConfig:
    """How a chat treats its earlier turns (``ask --chat`` and the app share it)."""

    history: str = option(
        "how a chat's earlier turns reach the backbone: text (earlier questions and answers as "
        "text turns before the question; the video once, at this turn's allocation) or none "
        "(every turn answered alone)",
        "text",
        choices=HISTORY_MODES,
    )

    def __post_init__(self) -> None:
        check_history_mode(self.history)


def check_history_mode(mode: str) -> None:
    """Raise HistoryError for a mode outside :data:`HISTORY_MODES`."""
    if mode not in HISTORY_MODES:
        raise HistoryError(f"history {mode!r} is not one of {', '.join(HISTORY_MODES)}")


@dataclass(frozen=True)
class Turn:
    """One earlier turn of a chat: what was asked and what the backbone answered."""

    question: str
    answer: str


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex): the same upload under another name is the same video."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class DecodeCache:
    """Decoded videos by (content hash, fps, frame count), least recently used first out.

    Bounded by ``max_bytes`` of frames over all entries and ``max_videos`` entries; ``hits`` and
    ``misses`` count lookups. A path that is not a regular file is handed to the decoder as is (it
    raises the boundary error).
    """

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES, max_videos: int = MAX_CACHED_VIDEOS):
        assert max_bytes > 0 and max_videos > 0
        self.max_bytes = max_bytes
        self.max_videos = max_videos
        self._videos: OrderedDict[tuple, SampledVideo] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes of decoded frames held now."""
        return sum(v.frames.nbytes for v in self._videos.values())

    def __len__(self) -> int:
        return len(self._videos)

    def video(self, path: str, request: Request, decode: Decode) -> SampledVideo:
        """The decoded video of ``path`` at the request's sampling: cached, or decoded and kept."""
        if not path or not os.path.isfile(path):
            return decode(path, request)
        key = (file_digest(path), request.fps, request.num_frames)
        if key in self._videos:
            self.hits += 1
            self._videos.move_to_end(key)
            return self._videos[key]
        self.misses += 1
        video = decode(path, request)
        size = video.frames.nbytes
        if size > self.max_bytes:
            logger.info("a decoded video of %d bytes is over the cache's bound: not kept", size)
            return video
        self._videos[key] = video
        while len(self._videos) > self.max_videos or self.nbytes > self.max_bytes:
            self._videos.popitem(last=False)
        return video

    def clear(self) -> None:
        self._videos.clear()


class Chat:
    """Turns about videos through one pipeline: each turn decodes through the cache, allocates for
    its own question, and answers with the earlier turns as text (``history="text"``) or alone."""

    def __init__(
        self,
        pipeline: Pipeline,
        history: str = "text",
        cache: DecodeCache | None = None,
        decode: Decode | None = None,
    ):
        check_history_mode(history)
        self.pipeline = pipeline
        self.history = history
        self.cache = cache if cache is not None else DecodeCache()
        self.decode = decode or pipeline.decode

    def context(self, turns: Sequence[Turn]) -> list[tuple[str, str]]:
        """The (question, answer) pairs this turn's prompt holds before the question: the last
        :data:`MAX_HISTORY_TURNS` turns with ``text``, none with ``none``. Raises HistoryError for
        a turn longer than :data:`MAX_TURN_CHARS`."""
        if self.history == "none":
            return []
        kept = [(t.question, t.answer) for t in turns[-MAX_HISTORY_TURNS:]]
        for question, answer in kept:
            if len(question) + len(answer) > MAX_TURN_CHARS:
                raise HistoryError(
                    f"an earlier turn is {len(question) + len(answer)} characters long; the limit "
                    f"is {MAX_TURN_CHARS}"
                )
        return kept

    def turn_stream(
        self, path: str, request: Request, turns: Sequence[Turn] = ()
    ) -> Iterator[Result]:
        """Answer ``request.question`` about ``path`` after ``turns``; yield the growing Result
        (:meth:`Pipeline.answer_stream`). The policy, budget and sampling are this request's."""
        t0 = time.perf_counter()
        video = self.cache.video(path, request, self.decode)
        t1 = time.perf_counter()
        allocation = self.pipeline.allocate(video, request)
        timings = {"decode_s": t1 - t0, "allocate_s": time.perf_counter() - t1}
        history = self.context(turns)
        yield from self.pipeline.answer_stream(video, allocation, request, timings, history)

    def turn(self, path: str, request: Request, turns: Sequence[Turn] = ()) -> Result:
        """One turn's final Result."""
        *_, result = self.turn_stream(path, request, turns)
        return result
