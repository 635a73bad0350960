"""Which part of each checkpoint tensor a tensor-parallel rank holds.

Megatron-style: q/k/v and gate/up are column-parallel (a rank computes some of their output
features: whole attention heads, a slice of the MLP), o_proj and down_proj row-parallel (a rank
holds the matching input features and their partial outputs are summed over the ranks). Key and
value heads split like the query heads; with fewer of them than ranks, each is replicated on the
ranks whose query heads attend with it. Embeddings, norms and the LM head are replicated.

A weight format says which part of its tensors a split takes (``dense_index`` for plain
weights); a quantized format defines its own rule, e.g. AWQ splitting its packed columns and
whole quantization groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.distributed.parallel_state import Shard
from app.engine.errors import UnsupportedModelError
from app.engine.models.config import ModelConfig

# An index into a checkpoint tensor: () is all of it.
Index = tuple[slice, ...]


@dataclass(frozen=True)
class Split:
    """Part ``index`` of ``parts`` equal parts of a linear's output features ("out":
    column-parallel) or input features ("in": row-parallel)."""

    along: str
    index: int
    parts: int


def heads_split(num_heads: int, shard: Shard) -> Split:
    """A rank's share of ``num_heads`` heads: its 1/world of them or, with fewer heads than
    ranks, the one head that world/num_heads consecutive ranks share."""
    parts = min(num_heads, shard.world)
    return Split("out", shard.rank // (shard.world // parts), parts)


def local_heads(num_heads: int, shard: Shard) -> int:
    """How many of ``num_heads`` heads a rank holds."""
    return num_heads // heads_split(num_heads, shard).parts


def dense_index(kind: str, shape: Sequence[int], split: Split) -> Index | None:
    """The part of a plain weight [out, in] or bias [out] a split takes: its rows (column-parallel)
    or columns (row-parallel). A row-parallel bias is added once, by part 0 (None: no part)."""
    if split.along == "out":
        return (equal_part(shape[0], split),)
    if kind == "bias":
        return () if split.index == 0 else None
    return (slice(None), equal_part(shape[1], split))


def equal_part(size: int, split: Split) -> slice:
    """The split's share of ``size`` items along one dimension."""
    n = size // split.parts
    return slice(split.index * n, (split.index + 1) * n)


def check_divisible(cfg: ModelConfig, world: int) -> None:
    """Refuses a model whose heads or MLP do not split evenly over ``world`` ranks."""
    problems = []
    if cfg.num_heads % world:
        problems.append(f"its {cfg.num_heads} attention heads")
    if cfg.num_kv_heads % world and world % cfg.num_kv_heads:
        problems.append(f"its {cfg.num_kv_heads} key/value heads (or be a multiple of them)")
    if cfg.intermediate_size % world:
        problems.append(f"its MLP size {cfg.intermediate_size}")
    if problems:
        raise UnsupportedModelError(f"tensor_parallel={world} must divide {' and '.join(problems)}")
