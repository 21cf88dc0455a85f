"""The built-in model's architecture, untrained: what `filmweaver train` trains on the synthetic world.

A compact Wan transformer, a compact Wan VAE (4x spatial, no temporal compression), a small UMT5 over
the synthetic grammar's words and a small CLIP for keyframe selection and retrieval, built from the
same diffusers / transformers classes as any Wan. It lives with the synthetic world because its
vocabulary is that world's; the library loads the trained model with ``FilmModels.from_pretrained``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import CLIPConfig, CLIPModel, UMT5Config, UMT5EncoderModel

from filmweaver.backbone.vae import LatentCodec
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.memory.embedder import CLIPEmbedder
from filmweaver.models import FilmModels
from filmweaver.synth.stories import grammar_words
from filmweaver.text import WanPromptEncoder, word_level_tokenizer

# The EngineConfig defaults the built-in model is trained for and saved with (dotted keys reach into
# sections). The shot cache is shown at the low end of its training noise (100-400); memory guidance
# (one more forward a step while keyframes are in memory) at 4, where identity on the tuning stories
# stopped improving (reports/synth-small/guidance_tuning.md).
SYNTH_DEFAULTS = {"height": 64, "width": 64, "fps": 8, "chunk_frames": 4, "num_inference_steps": 12,
                  "guidance_scale": 3.0, "sampler.shift": 3.0, "sampler.scheduler": "unipc",
                  "sampler.memory_guidance_scale": 4.0,
                  "shot_cache.timestep": 100.0, "temporal_cache.timestep": 0.0, "keyframes.dedupe_threshold": 0.98}


def synth_architecture(seed: int = 0, device: str = "cpu", size: str = "small",
                       transformer: dict[str, int] | None = None, grammar: str = "single") -> FilmModels:
    """The untrained architecture of the built-in model: a compact Wan transformer, a compact Wan
    VAE (4x spatial, no temporal compression), a small UMT5 over the synthetic grammar's words and a
    small CLIP for keyframe selection and retrieval. ``size="test"`` is a miniature for unit tests.
    ``transformer`` overrides the transformer's ``heads``, ``head_dim``, ``layers`` or ``ffn``.
    ``grammar="cast"``: the words and prompt length of multi-character stories (72 tokens, not 40)."""

    dims = {"small": dict(heads=4, head_dim=64, layers=6, ffn=768, text=128, vae=32, clip=128, clip_layers=4),
            "test": dict(heads=2, head_dim=12, layers=2, ffn=32, text=32, vae=8, clip=32, clip_layers=1)}[size]
    unknown = set(transformer or {}) - {"heads", "head_dim", "layers", "ffn"}
    if unknown:
        raise ValueError(f"transformer sizes: unknown {sorted(unknown)} (heads, head_dim, layers, ffn)")
    dims.update(transformer or {})
    torch.manual_seed(seed)
    if grammar not in ("single", "cast"):
        raise ValueError(f"grammar {grammar!r}: expected single or cast")
    text_len = 72 if grammar == "cast" else 40  # three described characters take ~60 tokens
    tokenizer = word_level_tokenizer(grammar_words(cast=grammar == "cast"), model_max_length=text_len)
    vocab = len(tokenizer)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=dims["heads"], attention_head_dim=dims["head_dim"],
        in_channels=16, out_channels=16, text_dim=dims["text"], freq_dim=256, ffn_dim=dims["ffn"],
        num_layers=dims["layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )
    vae = AutoencoderKLWan(base_dim=dims["vae"], z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, False], scale_factor_temporal=1, scale_factor_spatial=4,
                           latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=vocab, d_model=dims["text"], d_kv=32, d_ff=2 * dims["text"], num_layers=2, num_heads=4,
        relative_attention_num_buckets=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=dims["clip"], intermediate_size=2 * dims["clip"],
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=text_len, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1),
        vision_config=dict(image_size=64, patch_size=8, hidden_size=dims["clip"], intermediate_size=2 * dims["clip"],
                           num_hidden_layers=dims["clip_layers"], num_attention_heads=4),
        projection_dim=64,
    ))
    return FilmModels(
        backbone=ContextWanTransformer(transformer).to(device),
        codec=LatentCodec(vae.to(device)),
        prompt_encoder=WanPromptEncoder(tokenizer, text_encoder.to(device), max_sequence_length=text_len),
        embedder=CLIPEmbedder(clip.to(device), tokenizer, image_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                              model_id=f"filmweaver-synth-{size}-clip"),
        scheduler_config=None,
        model_id=f"filmweaver-synth-{size}(untrained)",
        trained=False,
        defaults=dict(SYNTH_DEFAULTS),
    )
