"""An AWQ checkpoint folder as a plain floating-point transformers model, for evaluation.

transformers reads AWQ only through gptqmodel/autoawq kernels; unpacking into ordinary weights
instead lets an original and its quantized version run the very same HF forward, so a
perplexity difference measures the quantization alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from app.engine.quant.awq_format import unpack_linear


def is_awq_folder(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method") == "awq"


def dequantized_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors, with each qweight/qzeros/scales triple replaced by
    its float32 ``weight``."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    for name in [n for n in state if n.endswith(".qweight")]:
        base = name.removesuffix(".qweight")
        state[f"{base}.weight"] = unpack_linear(state.pop(name), state.pop(f"{base}.qzeros"),
                                                state.pop(f"{base}.scales"))
    return state


def load_dequantized(folder: Path, dtype: torch.dtype):
    """The AWQ folder's model with dequantized weights, in ``dtype``, on the CPU."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    del config.quantization_config
    state = {k: v.to(dtype) for k, v in dequantized_state_dict(folder).items()}
    model_class = getattr(transformers, config.architectures[0])  # the Auto class needs a path here
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                       attn_implementation="sdpa").eval()
