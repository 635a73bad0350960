"""Prefix caching with images: the image's placeholder tokens are the same for every picture, so
blocks holding part of an image are keyed by the picture too. The same picture at the same place
reuses the blocks; another picture shares only the blocks before it."""

from __future__ import annotations

from app.engine.block_manager import BlockManager
from app.engine.config import GenerationConfig
from app.engine.sequence import ImageSpan, Sequence

BLOCK = 4
IMAGE_TOKEN = 9


def prompt_with_image(digest: str) -> Sequence:
    # 6 text tokens, an image of 7 tokens from position 6 (blocks 1-3), 5 text tokens after it.
    tokens = [1, 2, 3, 4, 5, 6] + [IMAGE_TOKEN] * 7 + [7, 8, 10, 11, 12]
    return Sequence(tokens, GenerationConfig(), images=(ImageSpan(6, 7, digest, pixels=None),))


def computed(manager: BlockManager, seq: Sequence) -> Sequence:
    """As the engine does: match the cached prefix, allocate the rest, compute and commit it."""
    manager.match_prefix(seq)
    manager.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    manager.commit_full_blocks(seq)
    return seq


def test_blocks_holding_an_image_are_keyed_by_the_picture() -> None:
    manager = BlockManager(num_blocks=32, block_size=BLOCK)
    first = computed(manager, prompt_with_image("cat"))
    assert [seq_extra for seq_extra in (first.block_extra(i, BLOCK) for i in range(4))] == [
        b"", b"cat@-2;", b"cat@2;", b"cat@6;"]

    same = prompt_with_image("cat")
    manager.match_prefix(same)
    assert same.num_cached_prompt_tokens == 16  # every full block (the last token is left to compute)
    assert same.block_table == first.block_table[:4]

    other = prompt_with_image("dog")
    manager.match_prefix(other)
    assert other.num_cached_prompt_tokens == 4  # only the block before the picture
    assert other.block_table == first.block_table[:1]


def test_text_only_blocks_are_keyed_as_before() -> None:
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = computed(manager, Sequence(list(range(1, 11)), GenerationConfig()))
    again = Sequence(list(range(1, 11)), GenerationConfig())
    manager.match_prefix(again)
    assert again.block_table == first.block_table[:2] and first.block_extra(0, BLOCK) == b""
