"""Tiny random-weight checkpoints written with transformers, for checking our models against HF."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France. "
    "Large language models predict the next token from the tokens before it. "
    "def add(a, b):\n    return a + b\n 0123456789 café naïve 日本語 ✓"
)

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)

# architecture name -> config class name and extra settings exercising the family's features
VARIANTS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "llama3-rope": ("LlamaConfig", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "llama-linear-rope": ("LlamaConfig", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-bias": ("LlamaConfig", {"attention_bias": True, "mlp_bias": True, "head_dim": 32}),
    "mistral": ("MistralConfig", {"sliding_window": 24}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 32, "tie_word_embeddings": True}),
}


def write_tokenizer(out: Path, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token=None,
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def write_tiny_model(out: Path, variant: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """Writes config, random weights and a tokenizer to ``out``; returns the HF model (eval, fp32)."""
    import transformers

    config_class, extra = VARIANTS[variant]
    tokenizer = write_tokenizer(out)
    cfg = getattr(transformers, config_class)(  # overrides may pad vocab_size past the tokenizer's
        eos_token_id=tokenizer.eos_token_id, **{"vocab_size": len(tokenizer), **SHAPE, **extra, **overrides}
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(dtype).eval()
    model.save_pretrained(out)
    return model


def make_core(folder: Path, **options):
    """A synchronous EngineCore on a checkpoint folder: CPU, fp32 unless ``options`` say otherwise."""
    from app.engine.config import EngineConfig
    from app.engine.engine_core import EngineCore
    from app.engine.loader.model_loader import load

    config = EngineConfig(**{"model": folder, "device": "cpu", "dtype": "float32", **options})
    return EngineCore(load(config, folder), config)


VLM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


def write_tiny_llava(folder: Path):
    """A tiny random LLaVA 1.5 with its processor (tokenizer with an <image> token, CLIP's image
    processor at 28 pixels, a chat template taking image parts)."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
    )

    tokenizer = write_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=7, vision_feature_select_strategy="default", chat_template=VLM_TEMPLATE,
        num_additional_image_tokens=1)
    processor.save_pretrained(folder)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=16)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
                       initializer_range=0.2, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                      image_token_id=image_token_id))
    sharpen_vision_attention(model.model.vision_tower.encoder.layers)
    model.save_pretrained(folder)
    return model.eval()


def sharpen_vision_attention(layers) -> None:
    """Scales a random vision tower's queries and keys up: at the init's std 0.02 attention is all
    but uniform, and a test could not tell right positions or masks from wrong ones."""
    with torch.no_grad():
        for layer in layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(20)


QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_qwen2_vl(folder: Path, version: str = "2"):
    """A tiny random Qwen2-VL (or Qwen2.5-VL, ``version`` "2.5": windows of 2 x 2 merge blocks in
    its first vision block) with its processor: 4-pixel patches merged 2 x 2, pictures resized to
    between 64 and 1,024 pixels; M-RoPE sections 2 + 3 + 3 of the 8 rotation pairs."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # The processor's parts, saved one by one: Qwen2VLProcessor itself wants torchvision (videos).
    tokenizer = write_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]})
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2, min_pixels=64,
                             max_pixels=1024).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN2_VL_TEMPLATE)
    vision = dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, hidden_size=64, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2)
    if version == "2.5":
        vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=4,
                      temporal_patch_size=2, spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1])
    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, initializer_range=0.2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(getattr(transformers, f"{prefix}Config")(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>")))
    with torch.no_grad():  # sharp vision attention, as sharpen_vision_attention does for CLIP
        for block in model.model.visual.blocks:
            block.attn.qkv.weight.mul_(20)
    model.save_pretrained(folder)
    return model.eval()


INTERNVL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_internvl(folder: Path):
    """A tiny random InternVL (transformers-native layout) with its processor's parts: 32-pixel
    tiles (up to 4 and a thumbnail per picture) of 4-pixel patches, 16 tokens a tile after the
    pixel shuffle, a Qwen2 language model."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = write_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]})
    tokenizer.save_pretrained(folder)
    GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
                             max_patches=4).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(INTERNVL_TEMPLATE)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4)
    text = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=320, max_position_embeddings=512, initializer_range=0.2,
                eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=16))
    with torch.no_grad():  # sharp vision attention
        for layer in model.model.vision_tower.encoder.layer:
            layer.attention.q_proj.weight.mul_(20)
            layer.attention.k_proj.weight.mul_(20)
    model.save_pretrained(folder)
    return model.eval()


def write_tiny_llava_next(folder: Path):
    """A tiny random LLaVA-NeXT with its processor: 28-pixel tiles of 7-pixel patches, grids of
    up to 2 x 2 tiles, a learned row newline."""
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = write_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=7, vision_feature_select_strategy="default", chat_template=VLM_TEMPLATE,
        num_additional_image_tokens=1).save_pretrained(folder)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=16)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=320, max_position_embeddings=512, initializer_range=0.2,
                       eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints))
    sharpen_vision_attention(model.model.vision_tower.encoder.layers)
    model.save_pretrained(folder)
    return model.eval()
