"""Where a vision-language model's GPU logits part from HF's: ours and HF transformers', each on the
CPU and on the GPU, all in float32, first-token logits compared crosswise. Our engine against HF
on the same device tells whose side a difference is on (if HF's CPU and GPU runs agree, and ours
do not, it is ours; and so on).

Usage: python benchmarks/gpu_vlm_devices.py [--shape qwen2.5-vl-7b-2-layers] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from gpu_vlm import SHAPES, question, write_checkpoint
from PIL import Image

from app.engine import Engine, EngineConfig, GenerationConfig
from app.engine.vision.prompts import load_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-vl-7b-2-layers", choices=sorted(SHAPES))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--image-size", type=int, default=1024)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    folder = (args.workdir or Path(tempfile.mkdtemp(prefix="vlm-devices-"))) / args.shape
    write_checkpoint(folder, args.shape, "cuda" if torch.cuda.is_available() else "cpu")
    side = args.image_size
    picture = Image.fromarray((torch.rand(side, side, 3, generator=torch.Generator().manual_seed(1)) * 255)
                              .to(torch.uint8).numpy())
    messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                             {"type": "text", "text": question(64, 2)}]}]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    first = {}
    for device in devices:
        for kernels in ("torch", "auto") if device == "cuda" else ("auto",):
            with Engine() as engine:
                engine.load(EngineConfig(model=folder, device=device, dtype="float32", enable_prefix_caching=False,
                                         max_model_len=4096, kernels=kernels)).result()
                reply = engine.submit(messages=messages, gen=GenerationConfig(
                    temperature=0, max_new_tokens=1, output_logits=True)).result()
                first[f"ours {device} {kernels}"] = reply.logits[0].float().cpu()
                processor = load_processor(folder, engine._core.loaded.model)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, messages[0]["content"][1]]}])
    inputs = processor(text=text, images=[picture], return_tensors="pt")
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    for device in devices:
        hf = hf.to(device)
        ids = inputs["input_ids"].to(device)
        with torch.no_grad():
            out = hf(input_ids=ids, mm_token_type_ids=(ids == hf.config.image_token_id).long(),
                     pixel_values=inputs["pixel_values"].to(device), image_grid_thw=inputs["image_grid_thw"].to(device))
        first[f"HF {device}"] = out.logits[0, -1].float().cpu()
    names = list(first)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"{a:>16} vs {b:<16} max |difference| {(first[a] - first[b]).abs().max().item():.5f}")


if __name__ == "__main__":
    main()
