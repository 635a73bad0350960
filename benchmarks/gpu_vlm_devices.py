"""Where a vision-language model's logits part from HF's: ours and HF transformers', each on the
CPU and on the GPU, all in float32, compared crosswise — first-token logits for a picture and a
question, the vision tower's embeddings of the picture, and first-token logits for the question
alone. Our engine against HF on the same device tells whose side a difference is on, and which
part: the tower, or the language model.

Usage: python benchmarks/gpu_vlm_devices.py [--shape qwen2.5-vl-7b-2-layers] [--workdir DIR]
       [--init-device cpu|cuda] (where transformers draws the random weights)
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


def compare(results: dict[str, torch.Tensor], what: str) -> None:
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = (results[a].float() - results[b].float()).abs()
            print(f"{what}: {a:>16} vs {b:<16} max |difference| {diff.max().item():.5f} mean {diff.mean().item():.6f}"
                  f" (scale {results[b].float().abs().max().item():.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-vl-7b-2-layers", choices=sorted(SHAPES))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--init-device", default="cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    folder = (args.workdir or Path(tempfile.mkdtemp(prefix="vlm-devices-"))) / args.shape
    write_checkpoint(folder, args.shape, args.init_device)
    side = args.image_size
    picture = Image.fromarray((torch.rand(side, side, 3, generator=torch.Generator().manual_seed(1)) * 255)
                              .to(torch.uint8).numpy())
    words = question(64, 2)
    with_picture = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": words}]}]
    text_only = [{"role": "user", "content": words}]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    logits, text_logits, embeddings = {}, {}, {}
    for device in devices:
        with Engine() as engine:
            engine.load(EngineConfig(model=folder, device=device, dtype="float32", enable_prefix_caching=False,
                                     max_model_len=4096)).result()
            gen = GenerationConfig(temperature=0, max_new_tokens=1, output_logits=True)
            logits[f"ours {device}"] = engine.submit(messages=with_picture, gen=gen).result().logits[0].float().cpu()
            text_logits[f"ours {device}"] = engine.submit(messages=text_only, gen=gen).result().logits[0].float().cpu()
            model = engine._core.loaded.model
            processor = load_processor(folder, model)
            inputs = processor(text=processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": words}]}],
                add_generation_prompt=True), images=[picture], return_tensors="pt")
            text_inputs = processor(text=processor.apply_chat_template(text_only, add_generation_prompt=True),
                                    return_tensors="pt")
            embeddings[f"ours {device}"] = torch.cat(model.encode_images(model.split_pixels(inputs))).float().cpu()
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    for device in devices:
        hf = hf.to(device)
        ids = inputs["input_ids"].to(device)
        pixels, grid = inputs["pixel_values"].to(device), inputs["image_grid_thw"].to(device)
        with torch.no_grad():
            out = hf(input_ids=ids, mm_token_type_ids=(ids == hf.config.image_token_id).long(), pixel_values=pixels,
                     image_grid_thw=grid)
            logits[f"HF {device}"] = out.logits[0, -1].float().cpu()
            text_logits[f"HF {device}"] = hf(input_ids=text_inputs["input_ids"].to(device)).logits[0, -1].float().cpu()
            features = hf.model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
            features = getattr(features, "pooler_output", features)
            embeddings[f"HF {device}"] = torch.cat(list(features)).float().cpu()
    compare(embeddings, "image embeddings")
    compare(text_logits, "text-only logits")
    compare(logits, "picture + text logits")


if __name__ == "__main__":
    main()
