"""lmstation quantize and eval-ppl end to end on a tiny model."""

from __future__ import annotations

from app.cli import main


def test_quantize_then_eval_ppl(quant_model, tmp_path, capsys):
    folder, _ = quant_model("llama")
    out = tmp_path / "q"
    args = ["quantize", str(folder), "--out", str(out), "--group-size", "64", "--calib-samples", "2",
            "--calib-seqlen", "32"]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    perplexities = []
    for model in (folder, out, out):
        assert main(["eval-ppl", str(model), "--windows", "3", "--seqlen", "32", "--device", "cpu"]) == 0
        perplexities.append(float(capsys.readouterr().out.strip()))  # one number on stdout
    original, quantized, again = perplexities
    assert quantized == again  # deterministic
    assert 1 < original < 10 * quantized and quantized < 10 * original


def test_quantize_refusal_is_one_clear_line(quant_model, tmp_path, capsys):
    folder, _ = quant_model("llama")
    assert main(["quantize", str(folder), "--out", str(tmp_path / "q"), "--group-size", "48"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: group size 48 does not divide 128")
