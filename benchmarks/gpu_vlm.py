"""A vision-language model shape with random weights (Qwen2.5-VL-7B's by default): our engine's
image tokens and logits, and HF transformers' at the same dtype, each against HF's in float32,
for one 1024 x 1024 picture and a 64-token question; and the time to the first token, vision
tower included, ours beside HF's on the same input.

Usage: python benchmarks/gpu_vlm.py [--shape qwen2.5-vl-7b] [--device cuda] [--workdir DIR] [--runs 3]
       [--kernels auto|torch|triton] [--dtype bfloat16|float16|float32]
       (--shape tiny --device cpu: a quick check of the script itself; --shape
       qwen2.5-vl-7b-2-layers --device cpu --dtype bfloat16: the real widths on the CPU)

The checkpoint (config, random bf16 weights written by transformers, a word-level tokenizer, the
image processor's settings) goes to DIR, a temporary folder by default (~17 GB for the 7B shape).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from app.engine import Engine, EngineConfig, GenerationConfig
from app.engine.vision.prompts import load_processor, split_images

SHAPES = {
    "qwen2.5-vl-7b": dict(
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"),
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})),
    "qwen2.5-vl-7b-2-layers": dict(  # the real widths, two layers each: a check on the CPU
        vision=dict(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                    fullatt_block_indexes=[1], hidden_act="silu"),
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=2, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})),
    "tiny": dict(
        vision=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=14,
                    temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1]),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})),
}
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The video placeholder too: the processor counts it in every prompt (role words outside the
# word-level vocabulary would read as it if it were unknown as well).
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def write_checkpoint(folder: Path, shape: str, device: str) -> None:
    """config, random weights (drawn on ``device``), a word-level tokenizer over "<id>" words with
    the special tokens at the vocabulary's end, and the image processor's settings."""
    import transformers

    if (folder / "config.json").is_file():
        return
    config = write_model_files(folder, shape)
    started = time.monotonic()
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    print(f"random {shape} written in {time.monotonic() - started:.0f} s", flush=True)
    del model


def write_model_files(folder: Path, shape: str):
    """Everything but the weights (the tokenizer, chat template and processor settings); returns
    the model's config (not yet written)."""
    import transformers

    from app.engine.bench_shapes import write_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spec = SHAPES[shape]
    vocab_size = spec["text"]["vocab_size"]
    words = vocab_size - len(SPECIALS)
    write_word_tokenizer(folder, vocab_size, tuple(SPECIALS), eos_token="<|im_end|>")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    transformers.Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2).save_pretrained(folder)
    ids = {s: words + k for k, s in enumerate(SPECIALS)}
    config = transformers.Qwen2_5_VLConfig(
        vision_config=spec["vision"], text_config=dict(spec["text"], eos_token_id=ids["<|im_end|>"], bos_token_id=None),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    return config


def question(words: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"<{i}>" for i in torch.randint(10, 1000, (words,), generator=g).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-vl-7b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bf16 on a GPU, else fp32")
    parser.add_argument("--image-size", type=int, default=1024)
    args = parser.parse_args()
    folder = (args.workdir or Path(tempfile.mkdtemp(prefix="vlm-bench-"))) / args.shape
    # Weights drawn on the CPU: transformers leaves some tensors of a model built on a GPU as they
    # were allocated, holding whatever that memory held (benchmarks/gpu_vlm_devices.py --init-device
    # cuda: ours and HF then part by 1.6 in the logits on both devices; drawn on the CPU, 3e-5).
    write_checkpoint(folder, args.shape, "cpu")
    g = torch.Generator().manual_seed(1)
    side = args.image_size
    picture = Image.fromarray((torch.rand(side, side, 3, generator=g) * 255).to(torch.uint8).numpy())
    messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                             {"type": "text", "text": question(64, 2)}]}]
    dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    # Ours: the first run compiles kernels; then each run's time to the first token.
    gen = GenerationConfig(temperature=0, max_new_tokens=8, ignore_eos=True, output_logits=True)
    with Engine() as engine:
        engine.load(EngineConfig(model=folder, device=args.device, dtype=str(dtype).removeprefix("torch."),
                                 enable_prefix_caching=False, max_model_len=4096, kernels=args.kernels)).result()
        reply = engine.submit(messages=messages, gen=gen).result()
        ours_ttft = [engine.submit(messages=messages, gen=GenerationConfig(temperature=0, max_new_tokens=1)).result()
                     .stats.ttft_s for _ in range(args.runs)]
        print(f"ours: prompt {reply.stats.prompt_tokens} tokens, time to first token "
              f"{statistics.median(ours_ttft) * 1e3:.1f} ms (median of {args.runs}; {engine.stats()['kernels']})",
              flush=True)
        # The same prompt for HF, made by the parts the engine used (engine internals: a benchmark).
        processor = load_processor(folder, engine._core.loaded.model)
        # The engine's own rendering and pictures (load_image may resize one), so both sides read
        # the same prompt.
        rendered, pictures = split_images(messages)
        text = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=[p.image for p in pictures], return_tensors="pt")
        assert inputs["input_ids"].shape[1] == reply.stats.prompt_tokens, "HF's prompt is not the engine's"
        grid = tuple(inputs["image_grid_thw"][0].tolist())
        (our_features,) = engine._core.loaded.model.encode_images([(inputs["pixel_values"], grid)])
        our_features = our_features.float().cpu()

    # HF transformers on the same weights and input: its time to the first token is the processor's
    # work plus the prefill (vision tower included), as ours is; then its logits in fp32, the
    # reference both bf16 runs are measured against (bf16's own error sets the tolerance).
    from transformers import AutoModelForImageTextToText

    prompt = inputs["input_ids"][0].tolist()
    feed = dict(pixel_values=inputs["pixel_values"].to(args.device), image_grid_thw=inputs["image_grid_thw"].to(args.device))
    full = torch.tensor([prompt + reply.token_ids[:-1]], device=args.device)

    def hf_logits(hf_dtype: torch.dtype, timed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the vision tower's image tokens), both as fp32 on the CPU."""
        hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=hf_dtype, attn_implementation="sdpa")
        hf = hf.to(args.device).eval()
        image = hf.config.image_token_id
        with torch.no_grad():
            tower = hf.model.visual(feed["pixel_values"].to(hf_dtype), grid_thw=feed["image_grid_thw"])
            features = getattr(tower, "pooler_output", tower).float().cpu()
            logits = hf(input_ids=full, mm_token_type_ids=(full == image).long(),
                        **{k: v.to(hf_dtype) if v.is_floating_point() else v for k, v in feed.items()}
                        ).logits[0, len(prompt) - 1:].float()
            hf_ttft = []
            for _ in range(args.runs + 1 if timed else 0):  # the first warms up
                sync()
                started = time.perf_counter()
                again = processor(text=text, images=[p.image for p in pictures], return_tensors="pt")
                ids = again["input_ids"].to(args.device)
                hf(input_ids=ids, mm_token_type_ids=(ids == image).long(), pixel_values=again["pixel_values"].to(
                    args.device, hf_dtype), image_grid_thw=again["image_grid_thw"].to(args.device))
                sync()
                hf_ttft.append(time.perf_counter() - started)
        if timed:
            print(f"HF transformers: time to first token {statistics.median(hf_ttft[1:]) * 1e3:.1f} ms "
                  f"(median of {args.runs}; processor and prefill)", flush=True)
        del hf
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return logits.cpu(), features

    hf_same, hf_features = hf_logits(dtype, timed=True)
    reference, ref_features = hf_logits(torch.float32, timed=False) if dtype != torch.float32 else (hf_same, hf_features)
    ours = torch.stack(reply.logits).float().cpu()
    name = f"HF {str(dtype).removeprefix('torch.')}"
    for what, ref, runs in (("image tokens", ref_features, (("ours", our_features), (name, hf_features))),
                            (f"logits over {len(reply.token_ids)} steps", reference, (("ours", ours), (name, hf_same)))):
        for who, values in runs:
            error = (values - ref).abs()
            print(f"{what} against HF float32: {who}: max {error.max().item():.4f}, mean {error.mean().item():.5f} "
                  f"(std {ref.std().item():.3f})")
    print("ours, max error by step:", [round(e, 3) for e in (ours - reference).abs().amax(dim=1).tolist()])
    error = (ours - hf_same).abs()
    print(f"ours against HF at the same dtype: max {error.max().item():.4f}, mean {error.mean().item():.5f}")

if __name__ == "__main__":
    main()
