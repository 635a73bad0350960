"""Each refusal gives one clear message and leaves no partial checkpoint behind."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from app.engine.quant import QuantizeConfig, QuantizeError, quantize

CALIB = dict(group_size=64, calib_samples=2, calib_seqlen=32)


def _refused(config: QuantizeConfig, match: str, **kwargs) -> None:
    before = sorted(config.out.parent.iterdir())
    with pytest.raises(QuantizeError, match=match):
        quantize(config, **kwargs)
    assert sorted(config.out.parent.iterdir()) == before


def test_unsupported_architecture(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    other = tmp_path / "gpt2"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, architectures=["GPT2LMHeadModel"])))
    out = tmp_path / "outs" / "q"
    out.parent.mkdir()
    _refused(QuantizeConfig(model=other, out=out, **CALIB), r"cannot quantize GPT2LMHeadModel: supported .*Llama")


def test_group_size_that_does_not_divide(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    _refused(QuantizeConfig(model=folder, out=tmp_path / "q", group_size=96),
             r"group size 96 does not divide 128, the input size of self_attn.q_proj; group size 128 divides "
             r"every layer \(--group-size 128\)")


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", b"  \n\n", r"empty\.txt is empty"),
    ("empty.jsonl", b"\n", r"empty\.jsonl is empty"),
    ("weights.txt", bytes(range(256)) * 4, r"weights\.txt looks binary"),
])
def test_empty_or_binary_calibration_file(quant_model, tmp_path, name, content, match):
    folder, _ = quant_model("llama")
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_bytes(content)
    _refused(QuantizeConfig(model=folder, out=tmp_path / "q", calib_data=(data / name,), **CALIB), match)


def test_output_folder_that_exists(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    (tmp_path / "q").mkdir()
    _refused(QuantizeConfig(model=folder, out=tmp_path / "q", **CALIB), r"q already exists")
    assert list((tmp_path / "q").iterdir()) == []


def test_full_disk(quant_model, tmp_path):
    folder, _ = quant_model("llama")
    _refused(QuantizeConfig(model=folder, out=tmp_path / "q", **CALIB), r"not enough disk space .* 0\.00 GB are free",
             free_bytes=lambda _path: 1000)


@pytest.mark.parametrize("failure, raised, match", [
    (OSError(errno.ENOSPC, "No space left on device"), QuantizeError, "No space left on device"),
    (KeyboardInterrupt(), KeyboardInterrupt, None),  # Ctrl-C while writing
])
def test_failure_while_writing_removes_the_temporary_folder(quant_model, tmp_path, monkeypatch, failure, raised,
                                                            match):
    from app.engine.quant import checkpoint

    def fail(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(checkpoint, "save_file", fail)
    folder, _ = quant_model("llama")
    with pytest.raises(raised, match=match):
        quantize(QuantizeConfig(model=folder, out=tmp_path / "q", method="rtn", **CALIB))
    assert list(tmp_path.iterdir()) == []
