"""AWQ on the starter model beats round-to-nearest where it matters: held-out perplexity.

The CI variant: a small calibration set and few evaluation windows (the recorded figures in
docs/benchmarks.md come from the default settings). Same bar: AWQ's perplexity increase is at
most 60% of RTN's at the same group size."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from app.engine.quant import QuantizeConfig, quantize
from app.engine.quant.calibration import builtin_heldout_texts, token_windows
from app.engine.quant.perplexity import load_for_eval, windows_perplexity


def test_awq_increase_is_at_most_60_percent_of_rtn(starter_model, tmp_path):
    windows = token_windows(AutoTokenizer.from_pretrained(starter_model), builtin_heldout_texts(), 512, 4)

    def perplexity(folder) -> float:
        return windows_perplexity(load_for_eval(folder, torch.device("cpu")), windows).perplexity

    original = perplexity(starter_model)
    increase = {}
    for method in ("rtn", "awq"):
        config = QuantizeConfig(model=starter_model, out=tmp_path / method, method=method, group_size=64,
                                calib_samples=4, calib_seqlen=256, search_samples=2, device="cpu")
        increase[method] = perplexity(quantize(config)) - original
    assert increase["rtn"] > 0
    assert increase["awq"] <= 0.6 * increase["rtn"], (original, increase)
