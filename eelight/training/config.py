"""Run configuration: one typed OmegaConf structured config composed from
`experiments/*.yaml` plus dot-list overrides (`trainer.max_steps=200 model.aligner=fresh`).

`model_preset` picks the named model preset first; the YAML's and the command
line's `model.*` keys then override its fields. Unknown keys and wrong types
are rejected with the key named (`ConfigError`, one line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eelight.config_rules import above, at_least, between, check_fields, nonempty, one_of, seed_field
from eelight.data.text import PLACEMENTS
from eelight.errors import ConfigError, first_line
from eelight.eval.config import EvalConfig
from eelight.models.config import FLEX_NO_CPU_BACKWARD, ModelConfig
from eelight.models.overrides import apply_model_overrides
from eelight.training.stages import STAGES

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64")


@dataclass
class DataConfig:
    train_shards: str = "data/probe/train-{000000..000003}.tar"
    val_shards: str | None = "data/probe/eval-{attribute,small,count,relation,compare,reading,document}-000000.tar"
    tokenizer: str = "data/probe/tokenizer"
    template: str = "auto"  # the tokenizer's own chat_template; without one, the built-in `probe` format
    system_prompt: str | None = None  # template=auto: a system turn before the conversation
    image_placement: str = one_of(PLACEMENTS, "marker")  # the visual tokens where `<image>` stands (none: first) | start: always first
    max_length: int = at_least(1, 64)  # tokens; a sample cut by it is counted (data/cut_by_max_length)
    batch_size: int = at_least(1, 16)
    shuffle: int = at_least(0, 500)  # 0: no shuffle
    seed: int = seed_field()
    subset: int | None = at_least(1, None)  # first N samples: data-efficiency curves
    epoch_batches: int | None = at_least(1, None)  # fixed epoch length (batches per rank)
    resampled: bool = False  # draw shards with replacement: equal epochs on any shard count
    num_workers: int = at_least(0, 0)
    max_bad_samples: int | None = at_least(0, None)
    max_bad_fraction: float | None = between(0.0, 1.0, 0.05)
    val_samples: int = at_least(1, 64)  # held-out images used by validation (4 questions each)


@dataclass
class OptimConfig:
    lr: float = at_least(0.0, 1e-3)  # LLM and other trainable parameters
    projector_lr: float = at_least(0.0, 2e-3)
    new_params_lr: float = at_least(0.0, 2e-3)  # aligner copies, Flamingo cross-attention
    weight_decay: float = at_least(0.0, 0.0)
    warmup_steps: int = at_least(0, 20)
    min_lr_ratio: float = between(0.0, 1.0, 0.1)  # cosine decays to lr * min_lr_ratio
    betas: tuple[float, float] = between(0.0, 1.0, (0.9, 0.98), below_hi=True)


@dataclass
class TrainerConfig:
    max_steps: int = at_least(1, 300)
    accelerator: str = one_of(ACCELERATORS, "cpu")
    devices: int = at_least(1, 1)
    num_nodes: int = at_least(1, 1)
    strategy: str = one_of(STRATEGIES, "auto")
    precision: str = one_of(PRECISIONS, "32-true")
    accumulate_grad_batches: int = at_least(1, 1)
    gradient_clip_val: float | None = at_least(0.0, 1.0)
    log_every_n_steps: int = at_least(1, 10)
    ckpt_every_n_steps: int = at_least(1, 50)
    val_every_n_steps: int | None = at_least(1, None)  # None: validate only at the end
    progress_every_s: float = at_least(0.0, 30.0)  # a progress line on stderr at most this often (0: none)
    threads: int | None = at_least(1, None)  # torch intra-op threads; None: this process's share of the cores (threads.py)


RECIPE_MODES = ("stage", "frozen", "full", "lora")
# Llama / Mistral / Qwen attention and MLP, CLIP / SigLIP / DINOv2 attention and MLP
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "out_proj", "fc1", "fc2"]


@dataclass
class LoraSettings:
    rank: int = at_least(1, 8)
    alpha: float = above(0.0, 16.0)
    dropout: float = between(0.0, 1.0, 0.0, below_hi=True)
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # linear layers' own names

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise ValueError("recipe.lora.target_modules is empty; name the linear layers to adapt (e.g. [q_proj, v_proj])")


@dataclass
class RecipeConfig:
    """What trains in this stage, per component (TinyLLaVA Factory's recipes): `stage` (the stage
    table's choice: training/stages.py), `frozen`, `full`, or `lora` (LLM and vision tower only)."""

    llm: str = one_of(RECIPE_MODES, "stage")
    vision: str = one_of(RECIPE_MODES, "stage")
    projector: str = one_of(RECIPE_MODES[:3], "stage")
    new: str = one_of(RECIPE_MODES[:3], "stage")  # the new modules: aligner copies, SAISA's MLPs, Flamingo's blocks
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def uses_lora(self) -> bool:
        return "lora" in (self.llm, self.vision)


@dataclass
class MLflowConfig:
    tracking_uri: str | None = None  # None: sqlite store under ./mlruns/
    experiment: str = nonempty("eelight")
    parent_run_id: str | None = None  # nest this run under a parent (sweeps)
    run_id: str | None = None  # log into this existing run (a sweep trial's); its owner logs the params
    prefix: str = ""  # metric-name prefix: a sweep trial's stages share one run ("align-", "instruct-")


@dataclass
class RunConfig:
    name: str = nonempty("ee_mllm_tiny")
    out_dir: str = nonempty("runs")
    stage: str = one_of(STAGES, "align")
    init_from: str | None = None  # the previous stage's last.ckpt (instruct starts from align)
    seed: int = seed_field()
    model_preset: str = "ee_mllm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    def __post_init__(self) -> None:
        from eelight.eval.registry import check_names

        check_names(list(self.eval.benchmarks))
        check_fields(self, "")
        if "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"name={self.name!r} must be one folder name (runs go to out_dir/name/stage); "
                             "drop the '/'")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name / self.stage


def check_trainable(cfg: RunConfig) -> None:
    """What a run config may evaluate but not train: FastV's pruning ranks by each sample's last
    query, and a training batch is right-padded with no mask to say which row that is;
    FlexAttention has no backward on CPU."""
    if cfg.recipe.uses_lora and cfg.trainer.strategy == "fsdp":
        raise ConfigError("recipe LoRA with trainer.strategy=fsdp is not supported (its checkpoints hold the adapters "
                          "only, FSDP's sharded ones the whole model); use trainer.strategy=ddp or a full recipe")
    if cfg.model.attn_impl == "flex" and not _cuda_run(cfg.trainer):
        raise ConfigError(FLEX_NO_CPU_BACKWARD)
    if cfg.model.prune_after:
        raise ConfigError(f"model.prune_after={cfg.model.prune_after} (FastV) is applied at evaluation only: train "
                          "the LLaVA model, then `eelight eval RUN model_preset=fastv`; drop model.prune_after here")


def _cuda_run(cfg: TrainerConfig) -> bool:
    if cfg.accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return cfg.accelerator in ("gpu", "cuda")


def load_yaml(path: str) -> Any:
    """A YAML file as an OmegaConf node; a syntax error names the file and the line."""
    import yaml
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except UnicodeDecodeError as exn:
        raise ConfigError(f"{path} is not UTF-8 text ({exn.reason} at byte {exn.start}); fix the file") from exn
    except OSError as exn:
        if isinstance(exn, FileNotFoundError) or "Invalid loaded object type" not in str(exn):
            raise
        raise ConfigError(f"{path} does not hold `key: value` lines ({exn}); fix the file") from exn
    except yaml.YAMLError as exn:
        mark = getattr(exn, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exn, "problem", None) or str(exn).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the file") from exn


def _mapping(node: Any, path: str) -> Any:
    """A config file must hold keys and values (a YAML list or scalar is not a config)."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} does not hold `key: value` lines (it parses as a {type(node).__name__}); "
                          "fix the file")
    return node


def load_run_config(yaml_paths: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()
                    ) -> RunConfig:
    """Compose YAML files and dot-list overrides onto the typed defaults; validate."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    sources = [*yaml_paths, "the command line"]
    try:
        layers = [_mapping(load_yaml(p), p) for p in yaml_paths] + [OmegaConf.from_dotlist(list(overrides))]
        probe = OmegaConf.merge(*layers) if layers else OmegaConf.create()
        preset = probe.get("model_preset", "ee_mllm")
        model = apply_model_overrides(ModelConfig(), [f"model_preset={preset}"])
        merged = OmegaConf.structured(RunConfig(model_preset=preset, model=model))
        for source, layer in zip(sources, layers, strict=True):  # a bad key is named with its file
            try:
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as exn:
                key = getattr(exn, "full_key", None)
                raise ConfigError(f"{source}: bad config key {key!r}: {first_line(exn)}" if key
                                  else f"{source}: {first_line(exn)}") from exn
        cfg = OmegaConf.to_object(merged)
    except FileNotFoundError as exn:
        raise ConfigError(f"config file not found: {exn.filename}") from exn
    except OmegaConfBaseException as exn:
        key = getattr(exn, "full_key", None)
        raise ConfigError(f"bad config key {key!r}: {first_line(exn)}" if key else first_line(exn)) from exn
    except ValueError as exn:
        origin = f" (config: {' + '.join(sources if overrides else sources[:-1])})" if yaml_paths else ""
        raise ConfigError(first_line(exn) + origin) from exn
    assert isinstance(cfg, RunConfig)
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat `a.b.c -> value` params (for MLflow)."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg)))
    return out


# What a rerun may change and still resume: how long and where it runs, how it logs.
# Everything else (model, data, optimiser, seeds) is what the checkpoint was trained with.
RESUME_MAY_CHANGE = ("trainer.", "mlflow.", "out_dir", "init_from", "data.num_workers", "data.val_shards",
                     "data.val_samples", "eval.")
RESUME_MUST_MATCH = ("trainer.accumulate_grad_batches", "trainer.gradient_clip_val")


def read_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run's saved config.yaml as a RunConfig: the one reader (`eelight eval`, export, a resume's
    check). Keys added to eelight since it was written take today's defaults; `overrides` apply
    as on the command line; anything wrong is a one-line ConfigError naming the file."""
    return load_run_config([str(path)], overrides)


def saved_config(path: str | Path) -> RunConfig | None:
    """`read_run_config`, or None when the saved file no longer loads (a key since removed)."""
    try:
        return read_run_config(path)
    except ConfigError:
        return None


def resume_conflicts(saved_yaml: str, cfg: RunConfig) -> list[str]:
    """`key: saved -> now` for each setting that differs from the run being resumed."""
    from omegaconf import OmegaConf

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}

    def read(text: str) -> dict[str, Any]:  # both sides through YAML: tuples and lists compare equal
        return {k.rstrip("."): v for k, v in flat(OmegaConf.to_container(OmegaConf.create(text))).items()}

    saved, now = read(saved_yaml), read(to_yaml(cfg))
    out = []
    for key in sorted(saved.keys() | now.keys()):
        free = key.startswith(RESUME_MAY_CHANGE) and not key.startswith(RESUME_MUST_MATCH)
        if not free and saved.get(key, "(absent)") != now.get(key, "(absent)"):
            out.append(f"{key}: {saved.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}")
    return out
