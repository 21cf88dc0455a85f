"""The models a film needs, loaded together: backbone, latent codec, prompt encoder, memory embedder.

* :meth:`FilmModels.tiny` builds the ``tiny`` preset: a small *random, untrained* Wan configuration
  (transformer, VAE, UMT5 text encoder with a byte-level tokenizer) and a tiny random CLIP. It exists
  so the whole engine runs anywhere, offline, in seconds; its films are noise and say so.
* :meth:`FilmModels.from_pretrained` loads a diffusers-layout Wan directory or hub id
  (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) and a CLIP embedder.
  Nothing is ever downloaded unless the user names a hub id; a local directory that lacks a
  component is an error that names the missing file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from filmweaver.backbone.vae import LatentCodec
from filmweaver.backbone.wan import ContextWanTransformer
from filmweaver.memory.embedder import CLIPEmbedder, ImageTextEmbedder
from filmweaver.text import BYTE_VOCAB_SIZE, WanPromptEncoder, byte_level_tokenizer

FILMWEAVER_CONFIG = "filmweaver.json"
# The built-in model (configs/synth-small.yaml, trained on the synthetic world), shipped as package data.
BUILTIN_MODEL_DIR = Path(__file__).parent / "weights" / "synth-small"

WAN_LAYOUT = {
    "transformer": ["config.json"],
    "vae": ["config.json"],
    "text_encoder": ["config.json"],
    "tokenizer": [],
    "scheduler": ["scheduler_config.json"],
}
# what an image-to-video transformer (Wan2.1-I2V: ``image_dim`` in its config) needs besides
IMAGE_LAYOUT = {"image_encoder": ["config.json"], "image_processor": ["preprocessor_config.json"]}




class ModelLoadError(RuntimeError):
    pass


# WanTransformer3DModel configs: the releases' (diffusers' transformer/config.json) and the tiny random
# preset's. One table: presets name their shape, ``filmweaver bench`` builds random transformers from it.
_WAN_COMMON = dict(patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
TRANSFORMER_SHAPES: dict[str, dict] = {
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960, text_dim=4096,
                 in_channels=16, out_channels=16, freq_dim=256),
    "14b": dict(num_attention_heads=40, attention_head_dim=128, num_layers=40, ffn_dim=13824, text_dim=4096,
                in_channels=16, out_channels=16, freq_dim=256),
    "5b": dict(num_attention_heads=24, attention_head_dim=128, num_layers=30, ffn_dim=14336, text_dim=4096,
               in_channels=48, out_channels=48, freq_dim=256),
    "tiny": dict(num_attention_heads=2, attention_head_dim=12, num_layers=2, ffn_dim=32, text_dim=32,
                 in_channels=16, out_channels=16, freq_dim=256, rope_max_seq_len=32),
}

# Real Wan checkpoints (diffusers layout). Each preset is a hub id (or pass --model DIR for a local copy
# of the same layout), its transformer shape, and the settings the model was released with: EngineConfig
# defaults (dotted keys reach into sections). chunk_frames counts latent frames (Wan's VAE: 4x in time,
# so 21 = 81 frames). An A14B's two experts and the I2V's transformer share the 14B shape (the I2V's
# input has 36 channels: noise, mask and image latents; ``bench`` times the T2V layout).
_WAN480 = dict(height=480, width=832, fps=16, chunk_frames=21, num_inference_steps=50, guidance_scale=5.0)
WAN_PRESETS: dict[str, dict] = {
    "wan2.1-t2v-1.3b": {"hub_id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "shape": "1.3b",
                        "defaults": {**_WAN480, "sampler.shift": 3.0}},
    "wan2.1-t2v-14b": {"hub_id": "Wan-AI/Wan2.1-T2V-14B-Diffusers", "shape": "14b",
                       "defaults": {**_WAN480, "height": 720, "width": 1280, "sampler.shift": 5.0}},
    # I2V: the engine conditions each shot on an image (a cut: false shot's previous frame, else its best
    # retrieved keyframe) through the CLIP vision tower and the I2V channel layout (see the engine)
    "wan2.1-i2v-14b-480p": {"hub_id": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "shape": "14b",
                            "defaults": {**_WAN480, "sampler.shift": 3.0}},
    "wan2.2-ti2v-5b": {"hub_id": "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "shape": "5b",
                       "defaults": dict(height=704, width=1280, fps=24, chunk_frames=31, num_inference_steps=50,
                                        guidance_scale=5.0, **{"sampler.shift": 5.0})},
    "wan2.2-t2v-a14b": {"hub_id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "shape": "14b",
                        "defaults": {**_WAN480, "num_inference_steps": 40, "guidance_scale": 4.0,
                                     "sampler.guidance_scale_2": 3.0, "sampler.shift": 12.0}},
    "wan2.2-i2v-a14b": {"hub_id": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "shape": "14b",
                        "defaults": {**_WAN480, "num_inference_steps": 40, "guidance_scale": 3.5,
                                     "sampler.guidance_scale_2": 3.5, "sampler.shift": 5.0}},
}


def transformer_shape(name: str) -> dict:
    """The ``WanTransformer3DModel`` config of a shape (``1.3b``, ``14b``, ``5b``, ``tiny``) or of a
    preset's transformer (``wan2.1-t2v-1.3b``...). Raises ``KeyError`` naming the choices."""
    if name in WAN_PRESETS:
        name = WAN_PRESETS[name]["shape"]
    if name not in TRANSFORMER_SHAPES:
        raise KeyError(f"unknown shape {name!r}: choose from {', '.join([*TRANSFORMER_SHAPES, *WAN_PRESETS])}")
    return {**_WAN_COMMON, **TRANSFORMER_SHAPES[name]}


@dataclass
class FilmModels:
    backbone: ContextWanTransformer
    codec: LatentCodec
    prompt_encoder: WanPromptEncoder
    embedder: ImageTextEmbedder | None
    scheduler_config: dict | None
    model_id: str
    trained: bool
    # Settings this model was made for (resolution, fps, chunk length, steps...): EngineConfig defaults.
    defaults: dict = field(default_factory=dict)
    # StoryMem's pipeline: a text-to-video backbone for chunks with nothing in context (the first shot),
    # the memory-conditioned (M2V) backbone for the rest. Same VAE and text encoder (Wan2.2 T2V/I2V A14B).
    first_shot_backbone: object | None = None
    offload: object | None = None  # a filmweaver.offload.ModelOffload once enable_model_offload ran
    # Wan2.1-I2V: the CLIP vision tower whose image tokens join the text in cross-attention (the
    # transformer has ``image_dim``); None for every other backbone
    image_encoder: object | None = None
    # the filmweaver.runtime.ModelSetup these were loaded from (recorded in a project's manifest)
    setup: object | None = None

    def backbones(self) -> list:
        """Every backbone the engine may run: the main one, and the first-shot one if loaded."""
        return [self.backbone] + ([self.first_shot_backbone] if self.first_shot_backbone is not None else [])

    def experts(self) -> list[ContextWanTransformer]:
        """Every context-injected transformer of :meth:`backbones` (both experts of a Wan2.2 A14B
        switch count): what speed options, offload and context parallelism apply to."""
        return [e for b in self.backbones() for e in getattr(b, "experts", [b])]

    def load_first_shot_model(self, id_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        """Load only the transformer(s) of another Wan release (e.g. Wan2.2-T2V-A14B) for first shots."""
        root = Path(id_or_path)
        if root.is_dir():
            check_wan_directory(root, components=("transformer",))
        backbone = load_wan_backbone(id_or_path, dtype)
        if backbone.config.in_channels != self.codec.latent_channels:
            raise ModelLoadError(f"first-shot model {id_or_path} takes {backbone.config.in_channels} input channels; "
                                 f"a text-to-video model takes {self.codec.latent_channels}")
        self.first_shot_backbone = backbone.to(device)
        self.model_id = f"{self.model_id}+first-shot:{id_or_path}"  # in the manifest and every shot's fingerprint

    @property
    def embedder_id(self) -> str | None:
        return getattr(self.embedder, "model_id", None)

    def describe(self) -> dict:
        return {"id": self.model_id, "trained": self.trained, "embedder": self.embedder_id,
                "transformer": dict(self.backbone.config), "in_channels": self.backbone.config.in_channels}

    # -- tiny random preset -----------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, device: str = "cpu") -> FilmModels:
        """The untrained tiny preset. Deterministic: the same seed builds the same weights."""
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import CLIPConfig, CLIPModel, UMT5Config, UMT5EncoderModel

        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**transformer_shape("tiny"))
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=BYTE_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
                             eos_token_id=1),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                               num_hidden_layers=2, num_attention_heads=4),
            projection_dim=32,
        ))
        tokenizer = byte_level_tokenizer(model_max_length=512)
        models = cls(
            backbone=ContextWanTransformer(transformer.eval()).to(device),
            codec=LatentCodec(vae.to(device)),
            prompt_encoder=WanPromptEncoder(tokenizer, text_encoder.eval().to(device), max_sequence_length=64),
            embedder=CLIPEmbedder(clip.to(device), byte_level_tokenizer(model_max_length=77),
                                  model_id=f"tiny-random-clip(seed={seed})"),
            scheduler_config=None,
            model_id=f"tiny-random-wan(seed={seed})",
            trained=False,
            defaults=dict(height=64, width=64, fps=8, chunk_frames=3, num_inference_steps=4, guidance_scale=5.0),
        )
        return models

    # -- diffusers layout ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, id_or_path: str, embedder: str | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, text_dtype: torch.dtype | None = None,
                        lora: str | None = None, lora_2: str | None = None, vae_tiling: bool = False,
                        defaults: dict | None = None, only_expert: str | None = None) -> FilmModels:
        """Load a diffusers Wan layout. A ``transformer_2/`` (Wan2.2 A14B) becomes the low-noise expert
        of an :class:`~filmweaver.backbone.experts.ExpertSwitch` at ``model_index.json``'s
        ``boundary_ratio``. ``lora`` / ``lora_2``: LoRA files (original Wan or diffusers key names, e.g.
        StoryMem's ``backbone_high_noise.pth`` / ``backbone_low_noise.pth``) for the (first / second)
        transformer. ``defaults`` replace the generation defaults (a preset's release settings).
        ``only_expert``: an A14B with one expert loaded (:func:`load_wan_backbone`; for training)."""
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(id_or_path)
        local = root.is_dir()
        if local:
            check_wan_directory(root)
        elif root.exists() or str(id_or_path).startswith((".", "/")):
            raise ModelLoadError(f"model path {id_or_path} is not a directory (expected a diffusers Wan layout: "
                                 + ", ".join(f"{k}/" for k in WAN_LAYOUT) + ")")
        extra = {}
        if local and (root / FILMWEAVER_CONFIG).is_file():
            extra = json.loads((root / FILMWEAVER_CONFIG).read_text())
        backbone = load_wan_backbone(id_or_path, dtype, lora, lora_2, only_expert)
        for expert in getattr(backbone, "experts", [backbone]):
            # how the weights were trained to attend to context ("causal": keys/values reused per chunk)
            expert.context_attention = extra.get("context_attention", "full")
            expert.slot_regions = bool(extra.get("slot_regions", False))
        vae = AutoencoderKLWan.from_pretrained(id_or_path, subfolder="vae", torch_dtype=torch.float32)
        if vae_tiling:
            vae.enable_tiling()
        text_encoder = UMT5EncoderModel.from_pretrained(id_or_path, subfolder="text_encoder",
                                                        torch_dtype=text_dtype or dtype)
        tokenizer = AutoTokenizer.from_pretrained(id_or_path, subfolder="tokenizer")
        scheduler_config = None
        if local:
            scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        else:
            from diffusers import UniPCMultistepScheduler

            scheduler_config = dict(UniPCMultistepScheduler.load_config(id_or_path, subfolder="scheduler"))
        image_encoder = None
        if getattr(backbone.config, "image_dim", None):
            from filmweaver.backbone.image_encoder import WanImageEncoder

            image_encoder = WanImageEncoder.from_pretrained(id_or_path, device=device)  # float32, as released
        emb = None
        if embedder is not None:
            emb = CLIPEmbedder.from_pretrained(embedder, device=device)
        elif local and (root / "embedder").is_dir():
            emb = CLIPEmbedder.from_pretrained(str(root / "embedder"), device=device)
        return cls(
            backbone=backbone.to(device),
            codec=LatentCodec(vae.to(device)),
            prompt_encoder=WanPromptEncoder(tokenizer, text_encoder.eval().to(device),
                                            max_sequence_length=extra.get("max_sequence_length", 512)),
            embedder=emb,
            scheduler_config=scheduler_config,
            model_id=extra.get("model_id", str(id_or_path)),
            trained=extra.get("trained", True),
            defaults=defaults or extra.get("defaults", dict(_WAN480)),
            image_encoder=image_encoder,
        )

    def enable_model_offload(self, device: str, stream_blocks: bool = False) -> None:
        """Keep the text encoder, transformer(s) and VAE in CPU memory and move one at a time to
        ``device`` when it runs (see :mod:`filmweaver.offload`); the CLIP embedder moves to ``device``.

        ``stream_blocks`` (``--offload block``, for GPUs that cannot hold one transformer): each
        transformer keeps only its small parts on ``device`` and streams its blocks from CPU memory one
        at a time instead."""
        from filmweaver.offload import ModelOffload, offload_blocks

        manager = ModelOffload(device)
        manager.attach(self.prompt_encoder.text_encoder)
        for expert in self.experts():
            if stream_blocks:
                offload_blocks(expert, manager)
            else:
                manager.attach(expert)
        manager.attach(self.codec.vae)
        if self.image_encoder is not None:
            manager.attach(self.image_encoder.model)
        if self.embedder is not None and hasattr(self.embedder, "model"):
            self.embedder.model.to(device)
        self.offload = manager

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the diffusers Wan layout (+ context projections, embedder and filmweaver.json).

        ``dtype`` (e.g. ``torch.float16``) stores the transformer (and its context projections), VAE,
        text encoder and CLIP embedder weights in that precision (they load back in the dtype asked for
        at load time)."""
        root = Path(directory)
        experts = getattr(self.backbone, "experts", [self.backbone])
        if any(e.fused_for_inference for e in experts):
            raise ValueError(f"cannot save to {root}: the transformer was fused for inference (--fuse-qkv / "
                             "--fuse-ffn: joint q/k/v weights, LoRA adapters merged), a layout from_pretrained "
                             "does not read; save the model before fusing it, or load it again")

        def save(module, path):
            if dtype is None:
                module.save_pretrained(path)
            else:
                orig = next(module.parameters()).dtype
                module.to(dtype).save_pretrained(path)
                module.to(orig)
            # diffusers records where a model was loaded from; a saved model should not carry that path
            config = Path(path) / "config.json"
            if config.is_file() and "_name_or_path" in (cfg := json.loads(config.read_text())):
                del cfg["_name_or_path"]
                config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

        for name, expert in zip(("transformer", "transformer_2"), experts, strict=False):
            save(expert.transformer, root / name)
            expert.save_context_projections(root / name, dtype=dtype or torch.float32)
        if len(experts) > 1:
            (root / "model_index.json").write_text(json.dumps({
                "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
                "transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": self.backbone.boundary_ratio}))
        save(self.codec.vae, root / "vae")
        if self.image_encoder is not None:
            self.image_encoder.save_pretrained(root)
        save(self.prompt_encoder.text_encoder, root / "text_encoder")
        self.prompt_encoder.tokenizer.save_pretrained(root / "tokenizer")
        from filmweaver.sampler import SamplerConfig, make_scheduler

        make_scheduler(SamplerConfig(), self.scheduler_config).save_pretrained(root / "scheduler")
        if isinstance(self.embedder, CLIPEmbedder):
            save(self.embedder.model, root / "embedder")  # loads back in float32 (CLIPEmbedder.from_pretrained)
            self.embedder.tokenizer.save_pretrained(root / "embedder")
            (root / "embedder" / "preprocessor_config.json").write_text(json.dumps({
                "image_mean": self.embedder.mean.flatten().tolist(), "image_std": self.embedder.std.flatten().tolist(),
                "crop_size": {"height": self.embedder.image_size, "width": self.embedder.image_size}}))
        (root / FILMWEAVER_CONFIG).write_text(json.dumps({
            "model_id": self.model_id, "trained": self.trained, "defaults": self.defaults,
            "max_sequence_length": self.prompt_encoder.max_sequence_length,
            "context_attention": experts[0].context_attention,
            "slot_regions": bool(getattr(experts[0], "slot_regions", False))}, indent=2))


def load_wan_backbone(id_or_path: str, dtype: torch.dtype = torch.float32, lora: str | None = None,
                      lora_2: str | None = None, only_expert: str | None = None):
    """The transformer(s) of a diffusers Wan layout as a context-injected backbone: one
    :class:`ContextWanTransformer`, or an :class:`~filmweaver.backbone.experts.ExpertSwitch` when
    ``model_index.json`` lists ``transformer_2`` (Wan2.2 A14B), each with its optional LoRA file.
    ``only_expert`` (``"high_noise"`` / ``"low_noise"``): an A14B switch holding that expert alone
    (training one expert's LoRA: the other's 28 GB are never loaded)."""
    from diffusers import WanTransformer3DModel

    root = Path(id_or_path)
    local = root.is_dir()
    index = _model_index(root, id_or_path, local)

    def expert(subfolder: str, lora_file: str | None) -> ContextWanTransformer:
        tr = WanTransformer3DModel.from_pretrained(id_or_path, subfolder=subfolder, torch_dtype=dtype).eval()
        bb = ContextWanTransformer(tr)
        if local:
            bb.load_context_projections(root / subfolder)
        if lora_file:
            _attach_lora(bb, lora_file, subfolder)
        return bb

    two = (index.get("transformer_2") or [None])[0] is not None
    backbone = expert("transformer", lora) if not (two and only_expert == "low_noise") else None
    if two:
        from filmweaver.backbone.experts import ExpertSwitch

        if index.get("boundary_ratio") is None:
            raise ModelLoadError(f"{id_or_path}: model_index.json lists transformer_2 but no boundary_ratio")
        low = expert("transformer_2", lora_2) if only_expert != "high_noise" else None
        return ExpertSwitch(backbone, low, float(index["boundary_ratio"]))
    if lora_2:
        raise ModelLoadError(f"--lora-2 is for the second expert (transformer_2/), which {id_or_path} does not have")
    return backbone


def _model_index(root: Path, id_or_path: str, local: bool) -> dict:
    """``model_index.json`` (which components exist, Wan2.2's ``boundary_ratio``); {} if there is none."""
    if local:
        return _json_or_empty(root / "model_index.json")
    try:  # a hub id the user named: its index is part of the download they asked for
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(id_or_path, "model_index.json")).read_text())
    except Exception:
        return {}


def _attach_lora(backbone: ContextWanTransformer, path: str, where: str) -> None:
    """A LoRA file onto a backbone's transformer, at the scale the file records (else StoryMem's
    convention); memory projections saved beside it (``filmweaver train`` writes them into the LoRA's
    directory) replace the base's, so base + LoRA is the trained model."""
    from filmweaver.backbone.lora import (
        LoraConversionError,
        attach_wan_lora,
        load_state_dict,
        lora_file_settings,
    )

    try:
        attach_wan_lora(backbone.transformer, load_state_dict(path), **lora_file_settings(path))
    except (LoraConversionError, FileNotFoundError) as e:
        raise ModelLoadError(f"LoRA {path} for {where}: {e}") from e
    backbone.load_context_projections(Path(path).parent)


def check_wan_directory(root: Path, components: tuple[str, ...] | None = None) -> None:
    """Fail early, naming the missing piece, when a local directory is not a diffusers Wan layout
    (``components``: only these parts, e.g. the transformer(s) of a first-shot model)."""
    missing = []
    index = _model_index(root, str(root), True)
    layout = {k: v for k, v in WAN_LAYOUT.items() if components is None or k in components}
    if (index.get("transformer_2") or [None])[0] is not None:
        layout["transformer_2"] = ["config.json"]
    if components is None and _json_or_empty(root / "transformer" / "config.json").get("image_dim"):  # Wan2.1-I2V: its CLIP vision tower
        layout.update(IMAGE_LAYOUT)
    for sub, files in layout.items():
        d = root / sub
        if not d.is_dir():
            missing.append(f"{sub}/")
            continue
        missing += [f"{sub}/{f}" for f in files if not (d / f).is_file()]
        if sub in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder") and not any(d.glob("*.safetensors")):
            missing.append(f"{sub}/*.safetensors (weights)")
    if missing:
        raise ModelLoadError(
            f"{root} is not a complete diffusers Wan directory; missing: {', '.join(missing)}. Expected layout: "
            "transformer/ (config.json + safetensors), vae/, text_encoder/, tokenizer/, scheduler/scheduler_config.json, "
            "and for image-to-video transformers (image_dim set) image_encoder/ + image_processor/ "
            "(as saved by WanPipeline / WanImageToVideoPipeline.save_pretrained or downloaded from Wan-AI/*-Diffusers)."
        )


def _json_or_empty(path: Path) -> dict:
    """A JSON file's contents, or {} where it is missing or unreadable (the layout check names it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_models(preset: str | None = None, model: str | None = None, embedder: str | None = None,
                device: str = "cpu", dtype: torch.dtype = torch.float32, lora: str | None = None,
                lora_2: str | None = None, vae_tiling: bool = False) -> FilmModels:
    """One entry point for the CLI and clients. ``preset``: ``"synth"`` (default: the built-in model
    trained on the synthetic world, shipped in the package), ``"tiny"`` (random, untrained: engine
    tests) or a real Wan release (:data:`WAN_PRESETS`: its hub id, or ``model`` = a local directory of
    it, with its release settings). ``model`` without a Wan preset: any diffusers Wan hub id/directory."""
    if preset in WAN_PRESETS:
        spec = WAN_PRESETS[preset]
        return FilmModels.from_pretrained(model or spec["hub_id"], embedder=embedder, device=device, dtype=dtype,
                                          lora=lora, lora_2=lora_2, vae_tiling=vae_tiling,
                                          defaults=dict(spec["defaults"]))
    if model is not None:
        return FilmModels.from_pretrained(model, embedder=embedder, device=device, dtype=dtype, lora=lora,
                                          lora_2=lora_2, vae_tiling=vae_tiling)
    if preset in (None, "synth"):
        if not BUILTIN_MODEL_DIR.is_dir():
            raise ModelLoadError(f"the built-in model is missing from this installation ({BUILTIN_MODEL_DIR}); "
                                 "reinstall filmweaver or pass --model")
        return FilmModels.from_pretrained(str(BUILTIN_MODEL_DIR), embedder=embedder, device=device, dtype=dtype,
                                          lora=lora, lora_2=lora_2, vae_tiling=vae_tiling)
    if preset == "tiny":
        models = FilmModels.tiny(device=device)
        if lora_2:
            raise ModelLoadError("--lora-2 is for the second expert of a Wan2.2 A14B; the tiny preset has one")
        if lora:
            _attach_lora(models.backbone, lora, "transformer")
        if embedder is not None:
            models.embedder = CLIPEmbedder.from_pretrained(embedder, device=device)
        return models
    raise ModelLoadError(f"unknown preset {preset!r}: expected synth, tiny or one of {', '.join(WAN_PRESETS)} "
                         "(or pass --model with a Wan hub id or directory)")
