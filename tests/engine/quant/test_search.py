"""The pieces of AWQ: folding keeps the unquantized layer's function, the scale search never loses
to round-to-nearest on its own objective, and the clipping error's closed form matches tokens."""

from __future__ import annotations

import torch

from app.engine.quant.architecture import scale_groups
from app.engine.quant.clipping import group_second_moments, search_clip
from app.engine.quant.int4 import fake_quantize
from app.engine.quant.scale_search import activation_magnitude, fold_scales, search_scales


def _layer_and_inputs(model, seqlen: int = 16):
    ids = torch.randint(0, model.config.vocab_size, (3, seqlen), generator=torch.Generator().manual_seed(0))
    hidden = model.model.embed_tokens(ids)
    positions = torch.arange(seqlen).unsqueeze(0)
    kwargs = {"position_embeddings": model.model.rotary_emb(hidden, positions), "position_ids": positions}
    return model.model.layers[0], hidden, kwargs


def test_folding_scales_keeps_the_layer_output(quant_model):
    """Every group, v->o included (this model has no GQA), with the layer's biases."""
    import copy

    _, original = quant_model("llama")
    model = copy.deepcopy(original)
    for module in model.modules():  # biases, so their folding is exercised too
        if isinstance(module, torch.nn.Linear) and module.bias is None and module is not model.lm_head:
            module.bias = torch.nn.Parameter(torch.randn(module.out_features) * 0.1)
    layer, hidden, kwargs = _layer_and_inputs(model)
    with torch.no_grad():
        expected = layer(hidden, **kwargs)
        groups = scale_groups(layer)
        assert [g.prev for g in groups] == ["input_layernorm", "self_attn.v_proj", "post_attention_layernorm",
                                            "mlp.up_proj"]
        gen = torch.Generator().manual_seed(1)
        for group in groups:
            linears = [layer.get_submodule(n) for n in group.linears]
            scales = torch.rand(linears[0].in_features, generator=gen) * 4 + 0.25
            fold_scales(layer.get_submodule(group.prev), linears, scales)
        torch.testing.assert_close(layer(hidden, **kwargs), expected, rtol=1e-4, atol=1e-5)


def test_search_is_never_worse_than_round_to_nearest():
    """Ratio 0 is RTN; activations with a few large channels make larger ratios win."""
    gen = torch.Generator().manual_seed(0)
    fc = torch.nn.Linear(128, 64, bias=False)
    torch.nn.init.normal_(fc.weight, generator=gen)
    x = torch.randn(4, 32, 128, generator=gen)
    x[..., :4] *= 30  # outlier channels, as in real LLM activations
    weight = fc.weight.data.clone()

    def error(w: torch.Tensor) -> float:
        return float((x @ w.t() - x @ weight.t()).pow(2).sum())

    scales = search_scales(fc, x, activation_magnitude(x), [fc], group_size=64, grid=20)
    assert torch.equal(fc.weight.data, weight)  # the search leaves the weights as it found them
    assert scales[:4].min() > scales[4:].max()  # the outlier channels are protected
    awq = fake_quantize(weight * scales, 64) / scales
    assert error(awq) < 0.7 * error(fake_quantize(weight, 64))


def test_clip_error_closed_form_matches_the_tokens():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 128, generator=gen)
    weight[:, 5] *= 8  # an outlier weight per row: clipping it should pay off somewhere
    tokens = torch.randn(200, 128, generator=gen)
    shrink = search_clip(weight, group_second_moments(tokens, 64), group_size=64, grid=20, max_shrink=0.5)
    assert shrink.shape == (16, 2) and (shrink < 1).any() and (shrink >= 0.55).all()

    def group_errors(w: torch.Tensor) -> torch.Tensor:  # squared error of each group's partial sums
        diff = (w - weight).view(16, 2, 64)
        return torch.einsum("tgk,ngk->tng", tokens.view(200, 2, 64), diff).pow(2).sum(0)

    chosen = group_errors(fake_quantize(weight, 64, shrink))
    for factor in (1.0, 0.9, 0.75):
        assert (chosen <= group_errors(fake_quantize(weight, 64, factor)) * (1 + 1e-4)).all()
