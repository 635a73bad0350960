"""What the attention ops need to know about one step's flat batch of tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Sequences are ordered decodes first (one token each), then prefill chunks.

    Python lists serve the host-side loops of the reference path; the tensors serve kernels.
    """

    num_seqs: int
    num_decodes: int
    query_starts: list[int]  # offset of each sequence's tokens in the flat batch
    query_lens: list[int]  # tokens of each sequence in this step
    context_lens: list[int]  # cached tokens after this step (what attention sees)
    slot_mapping: torch.Tensor  # [T] long: cache slot of each new token
    block_tables: torch.Tensor  # [num_seqs, max_blocks] long, padded with 0
    decode_context_lens: torch.Tensor  # [num_decodes] long
    # For device kernels (no host loops): the same facts as tensors on the device.
    query_start_loc: torch.Tensor | None = None  # [num_seqs + 1] int32, cumulative query lengths
    context_lens_t: torch.Tensor | None = None  # [num_seqs] int32
    max_query_len: int = 0
