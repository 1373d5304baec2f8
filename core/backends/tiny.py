"""Tiny models built offline from configs with a fixed seed, for the CPU back end and tests.

They have the production architectures (Llama for chat, Stable Diffusion for images) at a few
hundred thousand parameters, random but deterministic weights, and tokenizers written by hand
(the chat tokenizer needs no torch: the validator counts prompts with it),
so the same loading, serving and checking code runs here without a model hub. A different seed
is a different model: that is how tests stand in a miner that runs the wrong one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

CHAT_SPECIALS = ("<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte (sorted, so ids are stable), shared by both
    tokenizers below."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def chat_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per byte, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(CHAT_SPECIALS + tuple(_byte_chars()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(CHAT_SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE  # `vllm serve` needs one; it renders what render() would
    return fast


def chat_model(seed: int):
    """A tiny LlamaForCausalLM with weights drawn from ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(CHAT_SPECIALS) + 256, hidden_size=64, intermediate_size=128,
        # head_dim 32 (2 heads of 64): vLLM's CPU attention needs at least 32
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init, so sampling is not uniform noise
        model.lm_head.weight.mul_(40.0)
    return model.eval()


def clip_tokenizer(folder: Path):
    """A CLIP tokenizer over single bytes, written to ``folder`` (CLIP's slow tokenizer wants
    vocab and merges files)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=77)


def image_pipeline(seed: int):
    """A tiny StableDiffusionPipeline (UNet, VAE, CLIP text encoder) with weights from ``seed``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=32,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
        vocab_size=len(tokenizer), projection_dim=32, max_position_embeddings=77,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    for module in (unet, vae, text_encoder):
        module.train(False)  # type: ignore[union-attr]  # eval(): torch modules, untyped here
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # a mixin's
    return pipe
