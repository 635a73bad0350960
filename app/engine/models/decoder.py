"""One decoder-only transformer covering the Llama, Mistral, Qwen2 and Qwen3 families.

The families differ only in switches carried by ModelConfig (biases, q/k norm, sliding window,
rope scaling, tied embeddings), so one readable implementation serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.attention_metadata import AttentionMetadata
from app.engine.errors import ModelLoadError
from app.engine.kernels import Ops
from app.engine.layers.attention import Attention
from app.engine.layers.linear import Linear
from app.engine.layers.norm import RMSNorm
from app.engine.layers.rotary import RotaryEmbedding
from app.engine.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]

# Checkpoint tensors that hold nothing the model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.ops = ops
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, cfg.mlp_bias, ops, dtype, device)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias, ops, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)
        self.self_attn = Attention(cfg, ops, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)
        self.mlp = GatedMLP(cfg, ops, dtype, device)

    def forward(self, x, residual, cos, sin, meta: AttentionMetadata, kv_cache: KVCache):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, meta, kv_cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Embedding(nn.Module):
    def __init__(self, num: int, dim: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class DecoderModel(nn.Module):
    """Embeddings, layers and final norm: token ids in, hidden states out."""

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops, dtype, device) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int):
        super().__init__()
        self.config, self.dtype, self.device = cfg, dtype, device
        self.model = DecoderModel(cfg, ops, dtype, device)
        self.ops = ops
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, ops, dtype, device)
        self.tied_head = None  # packed copy of the embedding for the logits, where kernels pack weights
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope, cfg.max_position_embeddings, max_len, dtype, device)
        self.fused_layers: list[Callable] | None = None  # whole-layer decode kernels, bound to a cache

    def bind_cache(self, kv_caches: list[KVCache]) -> None:
        """Where the kernels run whole layers for decode steps, binds them to the cache once."""
        if self.ops.bind_decode_layer is None:
            return
        try:
            self.fused_layers = [self.ops.bind_decode_layer(layer, k, v)
                                 for layer, (k, v) in zip(self.model.layers, kv_caches)]
        except ValueError:  # a shape or dtype the fused kernel does not take: the per-op path serves
            self.fused_layers = None

    @property
    def needs_seq_lens(self) -> bool:
        return self.config.rope.type == "dynamic"

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[KVCache],
        seq_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token."""
        cos, sin = self.rotary(positions, seq_lens, self.dtype)
        x = self.model.embed_tokens(input_ids)
        residual = None
        step = None
        if self.fused_layers is not None and meta.num_decodes == meta.num_seqs:
            step = self.ops.decode_step(cos, sin, meta.slot_mapping, meta.block_tables, meta.decode_context_lens)
        if step is not None:
            for fused in self.fused_layers:
                x, residual = fused(step, x, residual)
        else:
            for layer, kv_cache in zip(self.model.layers, kv_caches):
                x, residual = layer(x, residual, cos, sin, meta, kv_cache)
        x, _ = self.model.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        if self.tied_head is not None:
            return self.ops.packed_linear(hidden, self.tied_head).float()
        return F.linear(hidden, self.model.embed_tokens.weight).float()

    def weight_bytes(self) -> int:
        """Bytes of weights held, packed forms included: what a decode step streams, at most."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        packed = [m.packed for m in self.modules() if isinstance(m, Linear) and m.packed is not None]
        packed += [self.tied_head] if self.tied_head is not None else []
        return total + sum(p.data.numel() * p.data.element_size() for p in packed)

    def pack_weights(self) -> None:
        """Once weights are loaded: re-lays every linear for the selected kernels, one at a time."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
        if self.lm_head is None and self.ops.pack_linear is not None:
            self.tied_head = self.ops.pack_linear(self.model.embed_tokens.weight.data)

    # ---- weights -------------------------------------------------------------------------
    def _weight_slots(self) -> dict[str, Callable[[torch.Tensor], None]]:
        """Checkpoint tensor name -> how to store it. Separate q/k/v and gate/up tensors land
        in row ranges of our fused projections."""
        cfg = self.config
        q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
        fused = {
            "self_attn.q_proj": ("self_attn.qkv_proj", 0),
            "self_attn.k_proj": ("self_attn.qkv_proj", q),
            "self_attn.v_proj": ("self_attn.qkv_proj", q + kv),
            "mlp.gate_proj": ("mlp.gate_up_proj", 0),
            "mlp.up_proj": ("mlp.gate_up_proj", inter),
        }
        params = dict(self.named_parameters())
        slots = {name: partial(_copy_checked, p) for name, p in params.items()}
        for layer in range(cfg.num_layers):
            prefix = f"model.layers.{layer}."
            for source, (target, offset) in fused.items():
                module = self.get_submodule(prefix + target)
                for kind in ("weight", "bias"):
                    if f"{prefix}{target}.{kind}" in params:
                        slots.pop(f"{prefix}{target}.{kind}", None)
                        slots[f"{prefix}{source}.{kind}"] = partial(module.load_rows, kind, row_offset=offset)
        return slots

    @torch.no_grad()
    def fill_random(self, seed: int = 0) -> None:
        """Random weights (std 0.02, norms 1): real shapes for speed measurements."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies checkpoint tensors into place one at a time; checks every parameter got filled."""
        slots = self._weight_slots()
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and self.lm_head is None):
                continue
            store = slots.get(name)
            if store is None:
                raise ModelLoadError(f"the checkpoint holds a tensor this model does not have: {name}")
            try:
                store(tensor)
            except ValueError as exc:
                raise ModelLoadError(f"{name}: {exc}") from exc
            loaded.add(name)
        missing = sorted(slots.keys() - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(f"the checkpoint lacks {len(missing)} tensors the model needs: {shown}")


def _copy_checked(param: torch.Tensor, tensor: torch.Tensor) -> None:
    if param.shape != tensor.shape:
        raise ValueError(f"shape {tuple(tensor.shape)} does not match the model's {tuple(param.shape)}")
    param.copy_(tensor)
