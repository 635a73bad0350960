"""A request's life inside the engine: its tokens, where its KV lives, and how far it got."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from app.engine.config import GenerationConfig

_ids = itertools.count()


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, eq=False)
class ImageSpan:
    """An image in a prompt: its placeholder tokens [start, start + length), which the model
    replaces by the image's embeddings; ``pixels``: the model's preprocessed input for it;
    ``digest``: the picture's identity (vision.images.ImageInput.digest)."""

    start: int
    length: int
    digest: str
    pixels: Any = field(repr=False)  # a tensor, kept on the host until the tower runs

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(eq=False)
class Sequence:
    token_ids: list[int]
    gen: GenerationConfig
    stop_token_ids: frozenset[int] = frozenset()
    seq_id: int = field(default_factory=lambda: next(_ids))
    num_prompt_tokens: int = 0
    # Longest the sequence may grow (prompt + max_new_tokens, within the model's context).
    max_tokens: int = 1 << 62
    # Tokens whose keys/values are in the cache. The last sampled token is not, until the next step.
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain hash of each full block
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    seed: int = 0  # sampling noise key (see sampling.uniform_noise)
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    num_preemptions: int = 0
    images: tuple[ImageSpan, ...] = ()  # in prompt order, not overlapping
    # M-RoPE models: the prompt's (time, row, column) positions [3, prompt tokens], and what later
    # tokens add to their index (pictures take fewer positions than tokens).
    rope_positions: Any = field(default=None, repr=False)
    rope_delta: int = 0

    def __post_init__(self) -> None:
        self.num_prompt_tokens = self.num_prompt_tokens or len(self.token_ids)

    # token_ids may end in a placeholder: a token sampled by the step still on the device, as
    # -(its row in that step's samples + 1). Only the newest token can be one (see EngineCore).

    def block_extra(self, index: int, block_size: int) -> bytes:
        """What identifies block ``index`` beyond its tokens: the images it holds part of (their
        placeholder tokens are alike for every picture) and where in them it starts."""
        begin, end = index * block_size, (index + 1) * block_size
        return b"".join(f"{image.digest}@{begin - image.start};".encode()
                        for image in self.images if image.start < end and begin < image.end)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
