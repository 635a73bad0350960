"""The AWQ layout: our packing against a reader written from the format's description alone."""

from __future__ import annotations

import torch

from app.engine.quant.awq_format import pack_int4, pack_linear, unpack_int4, unpack_linear

SPEC_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i holds column n0 + SPEC_ORDER[i]


def spec_read_packed(packed: torch.Tensor) -> list[list[int]]:
    """int32 [R, C/8] -> the 4-bit values [R, C], one nibble at a time."""
    rows = []
    for word_row in packed.tolist():
        values = [0] * (len(word_row) * 8)
        for j, word in enumerate(word_row):
            word &= 0xFFFFFFFF  # the bits of a signed int32
            for i in range(8):
                values[8 * j + SPEC_ORDER[i]] = (word >> (4 * i)) & 0xF
        rows.append(values)
    return rows


def spec_dequantize(qweight, qzeros, scales) -> torch.Tensor:
    """W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n], returned as nn.Linear's [N, K]."""
    q, z = spec_read_packed(qweight), spec_read_packed(qzeros)
    s = scales.float().tolist()
    in_features, out_features = len(q), len(q[0])
    group = in_features // len(z)
    w = [[(q[k][n] - z[k // group][n]) * s[k // group][n] for n in range(out_features)] for k in range(in_features)]
    return torch.tensor(w, dtype=torch.float32).t()


def test_packed_nibbles_match_the_spec_reader():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 16, (5, 32), generator=gen)
    packed = pack_int4(values)
    assert packed.dtype == torch.int32 and packed.shape == (5, 4)
    assert spec_read_packed(packed) == values.tolist()
    assert torch.equal(unpack_int4(packed).long(), values)


def test_word_layout_is_awq_order():
    values = torch.arange(8).view(1, 8)  # column c holds value c
    word = int(pack_int4(values)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == SPEC_ORDER


def test_linear_tensors_match_the_spec_dequantization():
    gen = torch.Generator().manual_seed(1)
    out_features, in_features, group = 24, 64, 16
    q = torch.randint(0, 16, (out_features, in_features), generator=gen, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (out_features, in_features // group), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(out_features, in_features // group, generator=gen) * 0.1).half()
    tensors = pack_linear(q, zeros, scales)
    assert tensors["qweight"].shape == (in_features, out_features // 8) and tensors["qweight"].dtype == torch.int32
    assert tensors["qzeros"].shape == (in_features // group, out_features // 8)
    assert tensors["scales"].shape == (in_features // group, out_features) and tensors["scales"].dtype == torch.float16
    expected = (q.float() - zeros.float().repeat_interleave(group, 1)) * scales.float().repeat_interleave(group, 1)
    assert torch.equal(spec_dequantize(**tensors), expected)
    assert torch.equal(unpack_linear(**tensors), expected)


def test_written_checkpoint_reads_back_through_the_spec(quant_model, tmp_path):
    """RTN stores exactly fake_quantize(W): the spec reader must recover it from the safetensors file."""
    from safetensors.torch import load_file

    from app.engine.quant import QuantizeConfig, quantize
    from app.engine.quant.int4 import fake_quantize

    folder, model = quant_model("qwen2")
    out = quantize(QuantizeConfig(model=folder, out=tmp_path / "q", method="rtn", group_size=64))
    tensors = load_file(out / "model.safetensors")
    for name in ("self_attn.k_proj", "mlp.down_proj"):
        key = f"model.layers.0.{name}"
        expected = fake_quantize(model.get_submodule(key).weight.detach(), 64)
        got = spec_dequantize(tensors[f"{key}.qweight"], tensors[f"{key}.qzeros"], tensors[f"{key}.scales"])
        assert torch.equal(got, expected)
    bias = model.get_submodule("model.layers.0.self_attn.k_proj").bias.detach()  # Qwen2: q/k/v have biases
    assert torch.equal(tensors["model.layers.0.self_attn.k_proj.bias"], bias.half())
