"""AWQ quantization of a Llama-3-8B-shaped model (random weights, the real config's shapes) on the GPU:
wall time and peak GPU memory, with the default 128 x 512 calibration tokens.

    python benchmarks/gpu_awq_quantize.py [--layers N] [--workdir DIR]

DIR (default: a temporary folder; needs ~23 GB free for all 32 layers) receives the bf16 source
checkpoint and the quantized one. ``--layers`` keeps only the first N decoder layers: a quick
check of the per-layer time and of the peak memory, which one layer sets. The shape's tokenizer
is word-level over "<id>" words, so the calibration file is random ids written as words.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from app.engine.bench_shapes import write_random_weights, write_shape_folder
from app.engine.quant import QuantizeConfig, QuantProgress, quantize

SHAPE = "llama-3-8b"
CALIB_SAMPLES, CALIB_SEQLEN = 128, 512


def _source(folder: Path, layers: int | None) -> Path:
    """config + tokenizer from bench_shapes, random bf16 weights drawn on the GPU (initialising 8B
    parameters on the CPU took minutes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    write_shape_folder(SHAPE, folder)
    if layers is not None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=layers), indent=2))
    start = time.monotonic()
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    total = write_random_weights(folder, shapes, "cuda")
    print(f"random {SHAPE} ({config.num_hidden_layers} layers, {total / 1e9:.1f} GB) written in "
          f"{time.monotonic() - start:.0f} s", flush=True)
    return folder


def _calibration_file(folder: Path, vocab: int) -> Path:
    file = folder / "calibration.txt"
    ids = torch.randint(0, vocab, (CALIB_SAMPLES * CALIB_SEQLEN + 1024,), generator=torch.Generator().manual_seed(0))
    file.write_text(" ".join(f"<{i}>" for i in ids.tolist()))
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, help="keep only the first N decoder layers (default: all 32)")
    parser.add_argument("--workdir", type=Path, help="where the source and quantized checkpoints go")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(1, "this benchmark needs a CUDA GPU\n")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="awq-bench-"))
    source = _source(work / SHAPE, args.layers)
    calibration = _calibration_file(work, 128256)
    out = work / f"{SHAPE}-awq"
    finished: list[float] = []

    def progress(p: QuantProgress) -> None:
        if p.stage == "quantizing":
            finished.append(p.elapsed_s)
            eta = f"{p.eta_s:.0f} s" if p.eta_s is not None else "?"
            print(f"layer {p.layer + 1}/{p.layers} quantizing at {p.elapsed_s:.1f} s, eta {eta}", flush=True)

    torch.cuda.reset_peak_memory_stats()
    start = time.monotonic()
    quantize(QuantizeConfig(model=source, out=out, calib_samples=CALIB_SAMPLES, calib_seqlen=CALIB_SEQLEN,
                            calib_data=(calibration,), device="cuda"), progress=progress)
    wall = time.monotonic() - start
    per_layer = (finished[-1] - finished[0]) / (len(finished) - 1) if len(finished) > 1 else float("nan")
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e9
    print(f"{torch.cuda.get_device_name()}: {SHAPE}, {len(finished)} layers, AWQ int4 g128, "
          f"{CALIB_SAMPLES}x{CALIB_SEQLEN} calibration tokens")
    print(f"wall {wall:.1f} s (load, calibrate, layers, write); {per_layer:.1f} s per layer; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; checkpoint {size:.2f} GB")


if __name__ == "__main__":
    main()
