"""One decoder-only transformer covering the Llama, Mistral, Qwen2 and Qwen3 families.

The families differ only in switches carried by ModelConfig (biases, q/k norm, sliding window,
rope scaling, tied embeddings), so one readable implementation serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.attention_metadata import AttentionMetadata
from app.engine.distributed import parallel_state
from app.engine.distributed.parallel_state import Shard
from app.engine.distributed.sharding import Index, Split, dense_index, heads_split
from app.engine.errors import ModelLoadError
from app.engine.kernels import Ops
from app.engine.layers.attention import Attention
from app.engine.layers.linear import Linear, linear_class
from app.engine.layers.norm import RMSNorm
from app.engine.layers.rotary import RotaryEmbedding
from app.engine.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]

# Checkpoint tensors that hold nothing the model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class GatedMLP(nn.Module):
    """Under tensor parallelism: this rank's slice of the MLP; down_proj sums the ranks' outputs."""

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, shard: Shard = Shard()):
        super().__init__()
        self.ops = ops
        inter = cfg.intermediate_size // shard.world
        projection = linear_class(cfg.quantization.group_size if cfg.quantization else None)
        self.gate_up_proj = projection(cfg.hidden_size, 2 * inter, cfg.mlp_bias, ops, dtype, device)
        # A row-parallel bias is added once, by rank 0 (see sharding.dense_index).
        self.down_proj = projection(inter, cfg.hidden_size, cfg.mlp_bias and shard.rank == 0, ops, dtype, device,
                                reduce=shard.reduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_silu_mul(self.gate_up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, shard: Shard = Shard()):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)
        self.self_attn = Attention(cfg, ops, dtype, device, shard)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)
        self.mlp = GatedMLP(cfg, ops, dtype, device, shard)

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

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, shard: Shard = Shard()):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops, dtype, device, shard) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype, device)


class DecoderLM(nn.Module):
    """``shard``: the part of the model this process holds under tensor parallelism (see
    app.engine.distributed). A vocabulary that splits evenly over the ranks is split: each rank
    computes its slice of the logits and they are gathered, rather than rank 0 reading the whole
    LM head while the others wait. Otherwise only rank 0 computes logits (and holds a head)."""

    def __init__(self, cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device, max_len: int,
                 shard: Shard = Shard()):
        super().__init__()
        self.config, self.dtype, self.device, self.shard = cfg, dtype, device, shard
        self.model = DecoderModel(cfg, ops, dtype, device, shard)
        self.ops = ops
        split = shard.world > 1 and cfg.vocab_size % shard.world == 0
        self.vocab_split = Split("out", shard.rank, shard.world) if split else None
        self.computes_logits = shard.rank == 0 or split
        vocab = cfg.vocab_size // shard.world if split else cfg.vocab_size
        untied = self.computes_logits and not cfg.tie_word_embeddings
        self.lm_head = Linear(cfg.hidden_size, vocab, False, ops, dtype, device) if untied else None
        self.tied_head = None  # packed copy of the embedding for the logits, where kernels pack weights
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope, cfg.max_position_embeddings, max_len, dtype, device)
        self.fused_layers: list[Callable] | None = None  # whole-layer decode kernels, bound to a cache
        self._linears = self._layer_linears()

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
        images: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, one row per input token. ``images``: (rows,
        embeddings) that replace the token embeddings of those rows (a VLM's image tokens)."""
        cos, sin = self.rotary(positions, seq_lens, self.dtype)
        x = self.model.embed_tokens(input_ids)
        if images is not None:
            rows, embeddings = images
            x = x.index_copy(0, rows, embeddings.to(x.dtype))
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
        if residual is None:  # a fused layer handed on the hidden state itself, maybe wider (w4a16_decode)
            return self.model.norm(x.to(self.dtype))
        x, _ = self.model.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the whole vocabulary (with a split vocabulary: on every rank)."""
        if self.lm_head is not None:
            logits = self.lm_head(hidden)
        elif self.tied_head is not None:
            logits = self.ops.packed_linear(hidden, self.tied_head)
        else:
            logits = F.linear(hidden, self._tied_head_weight())
        if self.vocab_split is not None:
            logits = parallel_state.gather_columns(logits)
        return logits.float()

    def _tied_head_weight(self) -> torch.Tensor:
        """The embedding rows this rank computes logits for, with tied embeddings."""
        weight = self.model.embed_tokens.weight.data
        return weight if self.vocab_split is None else weight[dense_index("weight", weight.shape, self.vocab_split)]

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
        if self.computes_logits and self.lm_head is None and self.ops.pack_linear is not None:
            self.tied_head = self.ops.pack_linear(self._tied_head_weight())

    # ---- weights -------------------------------------------------------------------------
    def _layer_linears(self) -> dict[str, tuple[str, int, Split]]:
        """Each checkpoint linear of a layer -> (our module holding it, its first row there, the
        part of it this rank holds)."""
        cfg, shard = self.config, self.shard
        attn, mlp = self.model.layers[0].self_attn, self.model.layers[0].mlp
        q, kv, inter = attn.q_size, attn.kv_size, mlp.gate_up_proj.out_features // 2
        heads, kv_heads = heads_split(cfg.num_heads, shard), heads_split(cfg.num_kv_heads, shard)
        columns, rows = Split("out", shard.rank, shard.world), Split("in", shard.rank, shard.world)
        return {
            "self_attn.q_proj": ("self_attn.qkv_proj", 0, heads),
            "self_attn.k_proj": ("self_attn.qkv_proj", q, kv_heads),
            "self_attn.v_proj": ("self_attn.qkv_proj", q + kv, kv_heads),
            "self_attn.o_proj": ("self_attn.o_proj", 0, rows),
            "mlp.gate_proj": ("mlp.gate_up_proj", 0, columns),
            "mlp.up_proj": ("mlp.gate_up_proj", inter, columns),
            "mlp.down_proj": ("mlp.down_proj", 0, rows),
        }

    def shard_index(self, name: str, shape: Sequence[int]) -> Index | None:
        """The part of checkpoint tensor ``name`` (of ``shape``) this rank holds: () all of it,
        None none of it (an LM head it does not use; a row-parallel bias on ranks past 0)."""
        if name == "lm_head.weight":
            if self.lm_head is None:
                return None
            return () if self.vocab_split is None else self.lm_head.shard_index("weight", shape, self.vocab_split)
        if self.shard.world == 1 or not name.startswith("model.layers."):
            return ()
        layer, _, rest = name.removeprefix("model.layers.").partition(".")
        source, _, kind = rest.rpartition(".")
        if source not in self._linears:
            return ()
        target, _, split = self._linears[source]
        return self.get_submodule(f"model.layers.{layer}.{target}").shard_index(kind, shape, split)

    def _weight_slots(self) -> dict[str, Callable[[torch.Tensor], None]]:
        """Checkpoint tensor name -> how to store it (this rank's part of it). Separate q/k/v and
        gate/up tensors land in row ranges of our fused projections."""
        fused = {source: (target, offset) for source, (target, offset, _) in self._linears.items() if source != target}
        params = dict(self.named_parameters())
        slots = {name: partial(_copy_checked, p) for name, p in params.items()}
        for layer in range(self.config.num_layers):
            prefix = f"model.layers.{layer}."
            for source, (target, offset) in fused.items():
                module = self.get_submodule(prefix + target)
                for kind in module.KINDS:
                    if f"{prefix}{target}.{kind}" in params:
                        slots.pop(f"{prefix}{target}.{kind}", None)
                        slots[f"{prefix}{source}.{kind}"] = partial(module.load_rows, kind, row_offset=offset)
        return slots

    def random_weights(self, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        """Random weights (std 0.02, norms 1) laid out as a checkpoint: real shapes for speed
        measurements. Each tensor is drawn whole from its own seed, so the ranks' parts are slices
        of one model, the same as the whole of it on one device."""
        for i, (name, shape) in enumerate(checkpoint_shapes(self.config).items()):
            index = self.shard_index(name, shape)
            if index is None:
                continue
            generator = torch.Generator(device=self.device).manual_seed(seed + i)
            if name.endswith(("qweight", "qzeros")):  # any 4-bit values; with these scales the weights' std is ~0.02
                tensor = torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32, device=self.device, generator=generator)
            elif name.endswith("scales"):
                tensor = torch.full(shape, 0.004, dtype=torch.float16, device=self.device)
            else:
                tensor = torch.empty(shape, dtype=self.dtype, device=self.device)
                if name.endswith("norm.weight"):
                    tensor.fill_(1.0)
                else:
                    tensor.normal_(0.0, 0.02, generator=generator)
            yield name, tensor[index]

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


def checkpoint_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face checkpoint of this shape, in the checkpoints' order of layers."""
    hidden, head_dim = cfg.hidden_size, cfg.head_dim
    q, kv, inter = cfg.num_heads * head_dim, cfg.num_kv_heads * head_dim, cfg.intermediate_size
    linears = {  # name -> (out, in, bias)
        "self_attn.q_proj": (q, hidden, cfg.qkv_bias), "self_attn.k_proj": (kv, hidden, cfg.qkv_bias),
        "self_attn.v_proj": (kv, hidden, cfg.qkv_bias), "self_attn.o_proj": (hidden, q, cfg.o_bias),
        "mlp.gate_proj": (inter, hidden, cfg.mlp_bias), "mlp.up_proj": (inter, hidden, cfg.mlp_bias),
        "mlp.down_proj": (hidden, inter, cfg.mlp_bias),
    }
    norms = {"input_layernorm": hidden, "post_attention_layernorm": hidden}
    if cfg.qk_norm:
        norms |= {"self_attn.q_norm": head_dim, "self_attn.k_norm": head_dim}
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, hidden)}
    for layer in range(cfg.num_layers):
        prefix = f"model.layers.{layer}."
        for name, (out, inp, bias) in linears.items():
            if cfg.quantization is None:
                shapes[f"{prefix}{name}.weight"] = (out, inp)
            else:  # AWQ "gemm" layout, see layers.linear.AWQLinear
                groups = inp // cfg.quantization.group_size
                shapes |= {f"{prefix}{name}.qweight": (inp, out // 8), f"{prefix}{name}.qzeros": (groups, out // 8),
                           f"{prefix}{name}.scales": (groups, out)}
            if bias:
                shapes[f"{prefix}{name}.bias"] = (out,)
        shapes |= {f"{prefix}{name}.weight": (size,) for name, size in norms.items()}
    shapes["model.norm.weight"] = (hidden,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, hidden)
    return shapes


def _copy_checked(param: torch.Tensor, tensor: torch.Tensor) -> None:
    if param.shape != tensor.shape:
        raise ValueError(f"shape {tuple(tensor.shape)} does not match the model's {tuple(param.shape)}")
    param.copy_(tensor)
