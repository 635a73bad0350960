"""Where a vision-language model's bf16 error grows, layer by layer: the language model's hidden
state after each decoder layer over the whole prompt (one picture and a question), ours in bf16
and HF transformers' in bf16, each against HF's in float32 on the same weights.

Usage: python benchmarks/gpu_vlm_layers.py [--shape qwen2.5-vl-7b] [--workdir DIR] [--device cuda]
       [--kernels auto|torch|triton] [--no-reduced-precision-reduction]

The checkpoint is benchmarks/gpu_vlm.py's (config, tokenizer, processor settings), with every
tensor drawn here on the device (normal, std 0.02; norms ones): fast, and nothing left the way
transformers leaves some tensors of a model built on a GPU (uninitialised memory).
--no-reduced-precision-reduction turns off cuBLAS's bf16 split-K reductions for our run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from gpu_vlm import SHAPES, question, write_model_files  # noqa: E402  (the sibling benchmark)

from app.engine import Engine, EngineConfig, GenerationConfig  # noqa: E402
from app.engine.bench_shapes import write_random_weights  # noqa: E402
from app.engine.models.decoder import DecoderLayer  # noqa: E402
from app.engine.vision.prompts import load_processor, split_images  # noqa: E402


def write_random_checkpoint(folder: Path, shape: str, device: str) -> None:
    """gpu_vlm's model files, and every weight drawn on ``device`` (bench_shapes.write_random_weights)."""
    import transformers

    if (folder / "model.safetensors.index.json").is_file():
        return
    config = write_model_files(folder, shape)
    started = time.monotonic()
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in transformers.Qwen2_5_VLForConditionalGeneration(config).state_dict().items()}
    write_random_weights(folder, shapes, device)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    config.dtype = torch.bfloat16
    config.save_pretrained(folder)
    print(f"random {shape} written in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-vl-7b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--no-reduced-precision-reduction", action="store_true")
    args = parser.parse_args()
    if args.no_reduced_precision_reduction:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    folder = (args.workdir or Path(tempfile.mkdtemp(prefix="vlm-layers-"))) / args.shape
    write_random_checkpoint(folder, args.shape, args.device)
    g = torch.Generator().manual_seed(1)
    picture = Image.fromarray((torch.rand(1024, 1024, 3, generator=g) * 255).to(torch.uint8).numpy())
    messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                             {"type": "text", "text": question(64, 2)}]}]

    # Ours: each decoder layer's output (its MLP output plus the residual) over the prompt's chunks.
    captured: dict[int, list[torch.Tensor]] = {}
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device=args.device, dtype="bfloat16", enable_prefix_caching=False,
                                 max_model_len=4096, kernels=args.kernels, cuda_graphs=False)).result()
        model = engine._core.loaded.model
        layers = [m for m in model.modules() if isinstance(m, DecoderLayer)]
        for i, layer in enumerate(layers):
            layer.register_forward_hook(lambda _m, _a, out, i=i: captured.setdefault(i, []).append(
                (out[0] + out[1]).float().cpu()))
        reply = engine.submit(messages=messages, gen=GenerationConfig(temperature=0, max_new_tokens=1)).result()
        prompt_len = reply.stats.prompt_tokens
        processor = load_processor(folder, model)
        # The engine's own rendering and pictures (load_image may resize one), so both sides read
        # the same prompt.
        rendered, pictures = split_images(messages)
        text = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=[p.image for p in pictures], return_tensors="pt")
        assert inputs["input_ids"].shape[1] == reply.stats.prompt_tokens, "HF's prompt is not the engine's"
        kernels = engine.stats()["kernels"]
    ours = [torch.cat(captured[i])[:prompt_len] for i in range(len(layers))]
    print(f"ours: {len(layers)} layers, prompt {prompt_len} tokens ({kernels})", flush=True)

    from transformers import AutoModelForImageTextToText

    def hf_hidden(dtype: torch.dtype) -> list[torch.Tensor]:
        hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
        hf = hf.to(args.device).eval()
        ids = inputs["input_ids"].to(args.device)
        with torch.no_grad():
            out = hf(input_ids=ids, mm_token_type_ids=(ids == hf.config.image_token_id).long(),
                     pixel_values=inputs["pixel_values"].to(args.device, dtype),
                     image_grid_thw=inputs["image_grid_thw"].to(args.device), output_hidden_states=True)
        states = [h[0].float().cpu() for h in out.hidden_states[1:-1]]  # after layers 0..L-2
        del hf, out
        torch.cuda.empty_cache()
        return states

    hf_bf16 = hf_hidden(torch.bfloat16)
    reference = hf_hidden(torch.float32)
    print("layer | |h| mean (fp32) | ours bf16 mean err | HF bf16 mean err | ratio")
    for i, ref in enumerate(reference):
        scale = ref.abs().mean().item()
        ours_err = (ours[i] - ref).abs().mean().item()
        hf_err = (hf_bf16[i] - ref).abs().mean().item()
        print(f"{i:5d} | {scale:14.4f} | {ours_err:18.5f} | {hf_err:16.5f} | {ours_err / max(hf_err, 1e-12):5.2f}",
              flush=True)


if __name__ == "__main__":
    main()
