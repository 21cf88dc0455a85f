"""The one training config (YAML): what to train, on what, for how long, with which augmentations.

``filmweaver train CONFIG`` reads this file; every phase is optional, and a phase whose outputs are
already in ``output_dir`` is skipped on resume. See ``configs/synth-small.yaml`` for the built-in
model; ``model.kind: pretrained`` trains a LoRA on a pretrained Wan's transformer instead, on a curated
dataset (``data.kind: curated``; ``configs/lora-wan2.1-t2v-1.3b.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from filmweaver.memory.temporal_cache import DEFAULT_SCHEDULE
from filmweaver.settings import apply_overrides, read_settings


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Cfg):
    # "synth-small"/"synth-test": build the synthetic-world architecture from scratch (full training);
    # "pretrained": load `path` (diffusers Wan directory or hub id) and train a LoRA on its transformer.
    kind: Literal["synth-small", "synth-test", "pretrained"] = "synth-small"
    path: str | None = None
    embedder: str | None = None
    # synth kinds: override the transformer's size (heads, head_dim, layers, ffn), e.g.
    # {heads: 5, layers: 8, ffn: 960}; tools/synth_cpu_step_cost.py times candidates on a CPU
    transformer: dict[str, int] | None = None
    # synth kinds: "cast" adds the words of multi-character shots and a longer prompt (72 tokens)
    grammar: Literal["single", "cast"] = "single"


class LoraConfig(_Cfg):
    rank: int = 128
    alpha: int | None = None  # default: the rank
    # rank-stabilised scale alpha / sqrt(rank), as StoryMem trains (its loader assumes it); false: alpha / rank.
    # The file records it (safetensors metadata), so `generate --lora` applies the trained scale either way.
    use_rslora: bool = True
    # StoryMem: attention q/k/v/o and the FFN of every block
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj",
                                                               "ffn.net.2"])


class SynthData(_Cfg):
    kind: Literal["synth"] = "synth"
    num_stories: int = 2000
    num_long_takes: int = 500
    long_take_frames: int = 32
    shot_frames: list[int] = Field(default_factory=lambda: [12, 16, 20])
    first_seed: int = 0  # stories use seeds first_seed .. first_seed + num_stories - 1 (evaluation uses others)
    # stories of a cast of 1-4 characters (synth.stories.make_cast_story), after the one-character ones
    cast_stories: int = 0
    height: int = 64
    width: int = 64
    workers: int = 0  # 0 = every CPU core this process may use (its affinity: taskset, a container)
    cache_dir: str | None = None  # keep the rendered frames here (.npy) and reuse them (ablation runs share one)


class CuratedData(_Cfg):
    """A dataset made by ``filmweaver curate`` (WebDataset shards): each sample a scene of several shots,
    its script's prompts and characters. Each shot's VAE latents are the shards' own where they were
    precomputed by the model being trained at this resolution (``curate --set latents.model=...``), else
    encoded once from the clips here; either way kept in ``output_dir/latents.bin`` and read memory-mapped
    (batch by batch: the dataset need not fit in memory)."""

    kind: Literal["curated"]
    path: str
    height: int | None = None  # default: the model's resolution
    width: int | None = None
    min_shots: int = Field(2, ge=1)  # scenes with fewer kept shots teach no memory and are skipped
    # aspect buckets, [[h, w], ...]: each scene trains at the one whose aspect is nearest its clips'
    # (footage mixes 16:9, 9:16, 4:3...), fitted without stretching; a batch comes from one bucket.
    # Unset: every clip at (height, width).
    buckets: list[tuple[int, int]] | None = None


class VaePhase(_Cfg):
    steps: int = 3000
    batch_size: int = 32
    clip_frames: int = 5
    lr: float = 1e-3
    kl_weight: float = 1e-6
    # take this model directory's VAE instead of training one ("builtin": the shipped model's)
    init_from: str | None = None


class EmbedderPhase(_Cfg):
    steps: int = 2000
    batch_size: int = 256
    lr: float = 5e-4
    # take this model directory's embedder instead of training one ("builtin": the shipped model's)
    init_from: str | None = None


class ProbePhase(_Cfg):
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    held_out_stories: int = 200  # the probe's check; the cast probe's: a quarter as many cast stories (>= 2)
    # take this model directory's attribute probe instead of training one ("builtin": the shipped one);
    # the cast probe (with cast stories in the data) is trained either way
    init_from: str | None = None


class Augment(_Cfg):
    negative_sampling: float = 0.3  # probability that a memory slot holds a keyframe of another story
    noise_shot_cache: tuple[float, float] | None = (100.0, 400.0)  # timestep range; None = clean
    noise_temporal_cache: tuple[float, float] | None = (0.0, 100.0)
    text_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    # probability that a sample's memory is drawn as the `entity` shot-cache policy retrieves it (each
    # character's least crowded earlier appearance, last, in the shot's order; train/data.py)
    entity_memory: float = Field(0.0, ge=0.0, le=1.0)
    # curated data: probability that a later shot of a scene is trained with its characters named, not
    # described (train/curated.py unrestated_prompt), as a script describes a character once and memory
    # carries the look after that; the synthetic world's stories already restate only sometimes
    unrestate: float = Field(0.0, ge=0.0, le=1.0)


class Stage(_Cfg):
    name: str
    steps: int
    # weights of the four inference modes (text / temporal / shot / both) in this stage's batches
    modes: dict[Literal["text", "temporal", "shot", "both"], float]
    long_takes: float = 0.0  # share of temporal-mode batches drawn from the long single takes


class DiTPhase(_Cfg):
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    max_memory: int = 4  # shot-cache keyframes per sample: 1..max_memory
    chunk_frames: int = 4
    temporal_schedule: list[tuple[int, int]] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    timestep_shift: float = 3.0
    # The synthetic world's character and props are small (a few latent pixels in a wide shot) and the
    # flat background is most of the loss: weight each target latent pixel by 1 + character_loss_weight
    # * (the character's coverage of it) + props_loss_weight * (the props' coverage), from the
    # renderer's ground truth. 0 and 0 = the plain velocity loss.
    character_loss_weight: float = 0.0
    props_loss_weight: float = 0.0
    train_text_encoder: bool = True
    # "causal": context tokens attend only to context, so a generated chunk can reuse their keys/values
    # at every denoising step (much cheaper memory at inference); saved with the model. "full": the
    # stock attention over all tokens (what pretrained Wan and StoryMem's LoRA do).
    context_attention: Literal["full", "causal"] = "full"
    # shot-cache keyframes pooled into 2x2 / 4x4 patches (4x / 16x fewer tokens); the model's default
    # shot_cache.compression at inference
    memory_compression: Literal[1, 2, 4] = 1
    # memory tokens carry whom they show: each keyframe's names (its shot's characters), pooled by the
    # text encoder, through a projection added to its tokens (ContextWanTransformer.enable_entity_tags)
    entity_tags: bool = False
    # memory tokens carry which of the generated shot's characters they show, by the shot's order
    # (ContextWanTransformer.enable_entity_slots): binding a look to a position needs no name matching
    entity_slots: bool = False
    # prompt tokens carry which of the shot's characters they speak of, by the same order
    # (ContextWanTransformer.enable_text_slots; filmweaver.text.entity_token_slots): which description
    # goes with which drawn character needs no reading of word order
    text_slots: bool = False
    # entity slots marked where each character is in a keyframe (its strip of the frame by its shot's
    # order, as the engine marks them without a detector), not on the whole frame; needs entity_slots
    region_slots: bool = False
    # regional prompts in training as the engine applies them (EngineConfig.regional_prompts): in a shot
    # of several characters each one's description is read only from its strip of the frame (by the
    # shot's order); a model trained so generates with them by default (filmweaver.json)
    regional_prompts: bool = False
    # start the DiT phase from a saved model directory (its transformer, context projections and text
    # encoder; same architecture, the text encoder's vocabulary may have grown; "builtin": the shipped
    # model) instead of random weights: continue a shipped model's training
    init_from: str | None = None
    # torch.compile the repeated transformer blocks with dynamic token counts (fused elementwise work:
    # the small synthetic model's step is many small kernels). Off by default; configs/synth-small.yaml
    # turns it on: same losses at 1.2-1.35x the steps a second on an H200 after ~50 s of compiling
    # (reports/synth-small/device_runs.md).
    compile_blocks: bool = False
    stages: list[Stage] = Field(default_factory=lambda: [
        Stage(name="temporal", steps=1000, modes={"text": 0.3, "temporal": 0.7}, long_takes=0.7),
        Stage(name="memory", steps=4000, modes={"text": 0.15, "temporal": 0.15, "shot": 0.35, "both": 0.35}),
    ])
    augment: Augment = Field(default_factory=Augment)
    lora: LoraConfig | None = None
    # recompute each transformer block's activations in the backward pass instead of keeping them: a
    # 480x832 chunk with memory fits one GPU at 1.3B and 14B (BENCHMARKS.md, "Training a memory LoRA")
    gradient_checkpointing: bool = False
    # "adamw8bit": bitsandbytes' 8-bit AdamW (pip install bitsandbytes; CUDA): a quarter of the
    # optimizer memory, for large LoRA ranks or full fine-tunes
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    # Wan2.2 A14B: the expert this run trains (one LoRA per expert, as StoryMem ships two files):
    # "high_noise" (`transformer`, timesteps at or above the boundary; generate --lora) or "low_noise"
    # (`transformer_2`, below it; --lora-2). The other expert is never loaded.
    expert: Literal["high_noise", "low_noise"] | None = None
    # several processes: shard every parameter, its gradient and its optimiser moments over them (FSDP2,
    # one unit per transformer block; filmweaver.train.sharding) instead of a full copy on each (DDP), for
    # models whose weights, gradients and Adam moments do not fit one GPU beside the activations (an A14B
    # expert, a full fine-tune). Same steps, same checkpoint files; one process: nothing to shard.
    fsdp: bool = False
    max_minutes: float | None = None  # safety stop: end the phase (and save) after this long
    # With max_minutes: the step rate is measured every 500 steps (from step 100) and the planned steps
    # ahead are fitted (every stage in proportion, at most the configured steps) to what fits in the time
    # left, so the LR schedule decays fully by the end on any GPU instead of being cut off mid-schedule.
    fit_steps_to_time: bool = False


class TrainConfig(_Cfg):
    output_dir: str = "runs/synth-small"
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    log_every: int = 50
    checkpoint_every: int = 1000
    model: ModelSource = Field(default_factory=ModelSource)
    data: SynthData | CuratedData = Field(default_factory=SynthData)
    vae: VaePhase | None = Field(default_factory=VaePhase)
    embedder: EmbedderPhase | None = Field(default_factory=EmbedderPhase)
    dit: DiTPhase = Field(default_factory=DiTPhase)
    probe: ProbePhase | None = Field(default_factory=ProbePhase)
    save_dtype: Literal["float32", "float16"] = "float16"
    stop_after: Literal["embedder", "probe", "dit"] | None = None  # run the phases up to this one only
    # The whole run (this invocation, every phase) ends within this many minutes: the DiT, the last phase,
    # gets what the earlier ones left (less a reserve for saving), at most its own dit.max_minutes. This is
    # what holds the documented one-GPU reproduction to its 25 minutes whatever the GPU and host.
    time_budget_minutes: float | None = None
    # experiment trackers through accelerate (each needs its package: tensorboard, wandb): every log line
    # (loss, learning rate, the coverage-layer losses) also goes there; log.jsonl is always written.
    # TensorBoard writes under output_dir/trackers.
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    # engine settings the trained model generates with unless told otherwise, saved into its
    # filmweaver.json beside those the training implies (inference-only choices such as
    # {regional_prompts: true}); EngineConfig's nested sections (sampler: {guidance_scale: 4})
    generate: dict = Field(default_factory=dict)

    @field_validator("generate")
    @classmethod
    def _engine_settings(cls, value: dict) -> dict:
        from filmweaver.engine.config import EngineConfig
        from filmweaver.settings import unknown_keys

        unknown = unknown_keys(EngineConfig, value)
        if unknown:
            raise ValueError(f"unknown engine setting(s) {', '.join(unknown)}")
        EngineConfig.model_validate(value)  # a bad value fails here, before training
        return value

    @model_validator(mode="after")
    def _sharding_precision(self) -> TrainConfig:
        # float16's loss scaling (accelerate's GradScaler) unscales the gradients of the optimiser it
        # prepared; a sharded run makes its own optimiser over the shards
        if self.dit.fsdp and self.mixed_precision == "fp16":
            raise ValueError("dit.fsdp trains in bf16 or float32 (mixed_precision: bf16 or no), not fp16")
        return self


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config; ``overrides`` are ``dotted.key=value`` strings (YAML values). A number in the
    key indexes a list: ``dit.stages.1.modes.shot=0.5`` sets the second stage's share of shot batches."""
    raw = apply_overrides(read_settings(path), list(overrides), str(path))
    return TrainConfig.model_validate(raw)
