"""Typed schema of the training config. Hydra's composed YAML is merged into it, so an unknown or
misspelled key fails at start with the list of valid keys (OmegaConf structured-config errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


# model.vision and model.llm are each pretrained (name_or_path and the runtime options) or tiny
# (the shape keys, or a named preset: model/presets.py). Shape keys default to None (not set) so
# one set beside a name_or_path is detected and refused at start, naming it.
@dataclass
class VisionConfig:
    name_or_path: Optional[str] = None  # pretrained: hub id / folder (CLIP, SigLIP, DINOv2); null = tiny
    input_size: Optional[int] = None  # resolution fed to the tower (its processor resizes to it); null = its own
    # tiny only: a named shape (model/presets.py), and shape keys that override its values
    preset: Optional[str] = None
    type: Optional[str] = None  # clip (default) | siglip | dinov2
    num_register_tokens: Optional[int] = None  # dinov2: register tokens (dropped with CLS before the compressor)
    image_size: Optional[int] = None
    patch_size: Optional[int] = None
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    intermediate_size: Optional[int] = None


@dataclass
class LLMConfig:
    name_or_path: Optional[str] = None  # pretrained: hub id / folder; null = tiny random LLaMA
    tokenizer: Optional[str] = None  # pretrained only: defaults to name_or_path
    load_in_4bit: bool = False  # QLoRA: the LLM's linear layers in 4-bit NF4 (bitsandbytes)
    # tiny only: a named shape (model/presets.py), and shape keys that override its values
    preset: Optional[str] = None
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    max_position_embeddings: Optional[int] = None
    vocab_size: Optional[int] = None  # the tokenizer learns up to this many; the rest are unused rows
    initializer_range: Optional[float] = None  # init std of the random weights


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    compressor: dict[str, Any] = field(default_factory=lambda: {"type": "mlp"})
    vision_feature_layer: Any = -2  # a hidden-state index, or a list of them concatenated on channels
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    dtype: str = "float32"  # weights dtype at load: float32 | bfloat16 | float16
    seed: int = 0  # init seed of tiny parts and the compressor
    compressor_init: Optional[str] = None  # LLaVA-1.5 mm_projector.bin (.safetensors) to start the mlp compressor from


@dataclass
class SourceConfig:
    """One source of ``data.train`` / ``data.eval``. In a mixture (``data.train`` only):
    ``sampling`` picks the source's pool of rows (``all`` | ``first:N%`` | ``random:N%`` |
    ``first:N`` | ``random:N``, random ones drawn with the run's seed); ``repeat`` (> 0) makes its
    count per epoch ``repeat x pool`` draws; ``weight`` (> 0, on every source or none) then
    redistributes the epoch's total draws in proportion to the weights, each source cycling
    through its pool in seeded random order. Under ``data.streaming`` the weights are the
    interleaving probabilities (needed with more than one source), ``sampling`` may only be
    ``all`` or ``first:N`` and ``repeat`` must be 1 (a stream cycles until ``optim.max_steps``).
    docs/data.md has worked examples; ``data/mixture.py`` is the implementation."""
    path: str = "???"
    format: str = "auto"  # llava | mantis | owl | auto
    placeholder: Optional[str] = None
    image_root: Optional[str] = None
    markers: str = "keep"  # keep | replace: what to do with a dataset's own image markers
    marker_pattern: Optional[str] = None
    split: str = "train"
    max_samples: Optional[int] = None  # read limit on usable rows, applied before sampling
    weight: Optional[float] = None
    sampling: str = "all"
    repeat: float = 1.0


@dataclass
class SynthConfig:
    """When set, ``synth`` data is generated into ``dir`` first (demo recipes)."""
    dir: str = "outputs/synth"
    n_train: int = 2000
    n_eval: int = 200
    n_captions: Optional[int] = None  # stage-1 caption items; default n_train
    seed: int = 0
    image_size: int = 64
    # Train split's task shares ({task: weight}, others 0); None: round robin. Eval stays round robin.
    # Typed Any: OmegaConf's struct mode refuses new keys in a typed dict (a `{blur: 1}` override);
    # the generator checks names and values instead.
    train_weights: Optional[Any] = None
    # Tasks generated (eval is round robin over them); None: every task.
    tasks: Optional[list[str]] = None
    # {share, directions}: the train split's first `share` asks only `directions` (curriculum
    # phase 0), the rest every direction; train it in order with data.curriculum=true.
    curriculum: Optional[Any] = None
    # The look of the scenes: "photo" or "flat" (synth/config.py: STYLES).
    style: str = "photo"
    # The directions asked in every split (e.g. [brighter, blurrier, more]); None: all.
    directions: Optional[list[str]] = None
    # Each train item of a two-way 2-image question also asked the other way, same images
    # (synth.generate's `mirror`): the pair can only be told apart by the question's direction.
    mirror: bool = False


@dataclass
class ReplayConfig:
    """Text-only replay in stage 2 (demo/replay.py): the base LLM's own answers to ``prompts``."""
    prompts: str = "configs/data/general_prompts.txt"  # one prompt per line (relative: cwd, then the repo)
    out: str = "outputs/replay.json"  # written once, reused while prompts and LLM are unchanged
    repeat: int = 1  # each answer this many times in the training data
    weight: Optional[float] = None  # its mixture weight (needed when the other train sources have one)
    max_new_tokens: int = 64  # answers not finished within this are left out


@dataclass
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)
    eval: list[SourceConfig] = field(default_factory=list)
    synth: Optional[SynthConfig] = None
    replay: Optional[ReplayConfig] = None  # stage 2: mix the base LLM's answers to general prompts in
    image_marker: str = "interleaved"  # interleaved ("Image k: " before image k) | none
    marker_template: str = "Image {k}: "
    conversation_template: str = "auto"  # auto | chat | vicuna_v1
    system_prompt: Optional[str] = None
    max_length: int = 2048
    on_error: str = "skip"  # skip (count, log, go on) | raise (stop at the bad sample, naming it)
    max_image_pixels: Optional[int] = None  # bigger images are bad (decompression bombs); null = PIL's ~89 Mpx
    max_skip_rate: float = 0.05  # the run fails when a larger share of samples is skipped
    skip_rate_min_samples: int = 200  # samples drawn before max_skip_rate applies during training
    log_skips_every: int = 50  # steps between skip-count log lines (and the cross-rank skip-rate check)
    # true | false | auto (packed under varlen attention kernels, grouped by length otherwise):
    # packed samples never attend to each other (train/batching.py, data/collator.py)
    packing: Any = False
    group_by_length: bool = False  # padded batches: samples of similar length together (less padding)
    token_budget: Optional[int] = None  # packed: plan micro-batches of <= this many tokens at the sampler
    pack_window: int = 1000  # samples per shuffled window the bin planner packs best-fit decreasing
    # Train phase by phase (each row's `curriculum_phase` field, ascending; shuffled within a phase
    # by the seed; rows without one spread over the run) instead of in random order.
    curriculum: bool = False
    feature_cache: Optional[str] = None  # stage 1 (frozen ViT): folder for cached ViT features
    num_workers: int = 0
    # true: read data.train as a stream (datasets.IterableDataset, data/streaming.py): split over
    # ranks and DataLoader workers, sources interleaved by weight, resumed exactly from the
    # checkpoint's stream state; needs optim.max_steps. false: Arrow tables (data/table.py).
    streaming: bool = False


#: LoRA settings where ``peft.*`` leaves them unset: on every linear layer of the LLM (never the
#: ViT, the compressor or lm_head).
LORA_DEFAULTS: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


@dataclass
class PeftConfig:
    """LoRA settings, read when ``stage.train_llm=lora``: the stage decides what trains. Unset
    (null) keys take :data:`LORA_DEFAULTS`; one set under a stage that trains no LoRA is an error."""
    r: Optional[int] = None
    alpha: Optional[int] = None
    dropout: Optional[float] = None
    target_modules: Any = None  # "all-linear" or module names, within the LLM only


@dataclass
class StageConfig:
    name: str = "align"  # align (stage 1) | instruct (stage 2)
    train_compressor: bool = True
    train_vision: bool = False
    # With train_vision: train only the N ViT encoder layers just below model.vision_feature_layer;
    # the embeddings and earlier layers stay frozen, so their features still reach the compressor
    # through the residual stream. null = the whole tower.
    vision_trainable_layers: Optional[int] = None
    train_llm: str = "frozen"  # frozen | lora (settings: peft.*) | full


@dataclass
class OptimConfig:
    lr: float = 1e-3  # compressor lr (and default for all)
    llm_lr: Optional[float] = None  # LoRA / full-LLM lr; defaults to lr
    vision_lr: Optional[float] = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # share of the run's steps, in [0, 1)
    scheduler: str = "cosine"
    epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 8
    global_batch_size: int = 8  # = per_device * world_size * grad_accum (accum is derived)
    max_grad_norm: float = 1.0
    bf16: Optional[bool] = None  # bf16 autocast; null = on where CUDA supports bf16
    gradient_checkpointing: bool = False


@dataclass
class DistConfig:
    """How ranks share the work: DeepSpeed when ``deepspeed`` names a JSON, FSDP2 when ``fsdp2`` is
    set, else plain DDP (one process, or DDP under torchrun)."""
    deepspeed: Optional[str] = None  # DeepSpeed JSON (relative paths: cwd, then the repo)
    # FSDP2 options (train/fsdp.py), e.g. {reshard_after_forward: true}; null: no FSDP
    fsdp2: Optional[dict[str, Any]] = None


@dataclass
class LoggerConfig:
    report_to: str = "none"  # none | wandb | tensorboard
    project: str = "llava_compare"
    logging_steps: int = 10


@dataclass
class EvalConfig:
    enabled: bool = False
    batch_size: int = 16
    max_new_tokens: int = 16
    mode: str = "loglik"  # loglik (option log-likelihood table) | generate (generated answers parsed,
    #                       log-likelihood agreement, examples, chat check: demo/user_report.py)
    examples: int = 3  # generate mode: example answers printed
    chat_prompts: list[str] = field(default_factory=list)  # text-only prompts answered before and after training
    chat_max_new_tokens: int = 48
    swap_orders: int = 0  # also score image-option items in N other image orders (order bias; eval/swaps.py)


@dataclass
class TrainConfig:
    run_name: str = "run"
    output_dir: str = "outputs/${run_name}"
    init_from: Optional[str] = None  # stage-1 output folder for stage 2
    seed: int = 0
    resume: str = "auto"  # auto (newest complete checkpoint) | never | a checkpoint path
    overwrite: bool = False  # start fresh in an output_dir that holds a run, deleting its checkpoints
    save_steps: int = 500
    save_total_limit: int = 2  # complete checkpoints kept (oldest pruned); <= 0 keeps all
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Recipe-level hooks (train/hooks.py), ``package.module:name`` each, called in this order.
    hooks: list[str] = field(default_factory=list)
