"""One training run (one stage) from a RunConfig: data, model, Lightning Trainer,
MLflow logging (`eelight.tracking`), atomic checkpoints and resume.

Resume: rerunning the same command finds `<run_dir>/last.ckpt` and continues
from it (model, optimizer, scheduler, step). The WebDataset stream cannot be
restored to its exact position through shuffle buffers, so a resumed run
starts a new slice of the data with seed `data.seed + step`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eelight.errors import ConfigError
from eelight.training.callbacks import benchmark_callback, stop_reason
from eelight.training.config import (
    RunConfig,
    check_trainable,
    flat_params,
    resume_conflicts,
    saved_config,
    to_yaml,
)
from eelight.training.signals import Stopped, signal_callback


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest of last.ckpt and SLURM's hpc_ckpt_*.ckpt (by global step), if any."""
    from eelight.training.distributed import checkpoint_step

    found = [p for p in [run_dir / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.exists()]
    return max(found, key=checkpoint_step) if found else None


def train(cfg: RunConfig, callbacks: list | tuple = ()) -> dict[str, Any]:
    """Run one stage; returns the checkpoint path, MLflow run id and final metrics.
    `callbacks`: extra Lightning callbacks (a sweep's pruning callback). torch's threads are
    this process's share of the cores (`training/threads.py`, `trainer.threads`) while it runs."""
    from eelight.training.threads import ThreadShare, thread_callback

    _quiet_third_party()
    threads = ThreadShare(cfg.trainer.threads, cfg.data.num_workers)
    threads.start()
    try:
        return _train(cfg, [*callbacks, thread_callback(threads)])
    finally:
        threads.stop()


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_third_party() -> None:
    """Lines that tell the user nothing about their run: Lightning's LitLogger advert on every
    stage, and a torch deprecation inside Lightning's own pytree helper."""
    import warnings

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvert) for f in logger.filters):
        logger.addFilter(_NoAdvert())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def _as_trained(saved_path: Path, cfg: RunConfig) -> str:
    """A saved config.yaml as `cfg` is written: today's defaults for keys added since, and a
    backbone given by a folder with the sizes `cfg` read from that same folder (an earlier
    eelight saved them unresolved): a run written by an earlier eelight resumes when nothing changed."""
    saved = saved_config(saved_path)
    if saved is None:
        return saved_path.read_text()
    model = saved.model
    if model.llm.path and model.llm.path == cfg.model.llm.path:
        model = replace(model, llm=cfg.model.llm)
    if model.vision.path and model.vision.path == cfg.model.vision.path:
        model = replace(model, vision=replace(cfg.model.vision, feature_layer=model.vision.feature_layer,
                                              feature_select=model.vision.feature_select))
    return to_yaml(replace(saved, model=model))


def _forget_failed_attempt(cfg: RunConfig) -> None:
    """A run folder with an MLflow run but no checkpoint is an attempt that failed before its
    first save: nothing to resume, and its params (say data.batch_size) may differ from this
    attempt's, which MLflow refuses to log into one run. So it is marked FAILED (if it still
    reads RUNNING) and this attempt starts a new MLflow run, saying so in one line."""
    import sys

    from lightning.pytorch.utilities import rank_zero_only

    id_file = cfg.run_dir / "mlflow_run_id"
    if cfg.mlflow.run_id or not id_file.exists() or rank_zero_only.rank != 0:
        return
    old = id_file.read_text().strip()
    id_file.unlink()
    from mlflow.exceptions import MlflowException

    from eelight.tracking import Tracking

    try:
        client = Tracking.of(cfg).client
        if client.get_run(old).info.status == "RUNNING":
            client.set_terminated(old, "FAILED")
    except MlflowException:
        pass  # that run is gone from the store: nothing to mark
    print(f"[train {cfg.name}/{cfg.stage}] the earlier attempt (MLflow run {old}) stopped before its first "
          "checkpoint: starting over in a new MLflow run", file=sys.stderr, flush=True)


def _killed(logger, stop, step: int, last: Path) -> None:
    """After a SIGTERM / SIGINT: the step reached is saved (`last.ckpt`); the MLflow run ends
    KILLED with the signal named; `Stopped` makes the CLI exit with 128 + signal."""
    if logger:
        from eelight.tracking import Tracking

        tracking = Tracking(logger._tracking_uri)
        tracking.set_tags(logger.run_id, {"stopped_by": stop.name})
        tracking.client.set_terminated(logger.run_id, "KILLED")
    raise Stopped(f"stopped by {stop.name} at step {step}; {last} holds that step: rerun the same command to "
                  "resume", stop.signum)


def _train(cfg: RunConfig, callbacks: list) -> dict[str, Any]:
    """One stage, step by step: check, set up the run folder, build, fit, report."""
    cfg, model = _checked(cfg)
    resume = _prepare_run_dir(cfg)
    parts = _build(cfg, model, resume)
    logger = _logger(cfg, parts.resume_step)
    stop = signal_callback() if not cfg.mlflow.run_id else None  # a sweep's stage: its worker handles signals
    callbacks = [*callbacks, *parts.callbacks, *([stop] if stop else [])]
    trainer = _trainer(cfg, logger, callbacks)
    trainer.fit(parts.module, datamodule=parts.data, ckpt_path=str(resume) if resume else None, weights_only=True)
    if stop is not None and stop.signum is not None:
        _killed(logger, stop, trainer.global_step, cfg.run_dir / "last.ckpt")
    return _report(cfg, trainer, parts, logger, stop_reason(callbacks))


def _checked(cfg: RunConfig) -> tuple[RunConfig, Any]:
    """What can be wrong before anything is built, named in one line; the model resolved, its
    folders read once: its sizes as trained go to params, config.yaml and the resume check."""
    from eelight.data.loader import expand_urls
    from eelight.models.hf_loading import resolve
    from eelight.tracking import tracking_uri
    from eelight.training.distributed import check_devices

    check_trainable(cfg)  # FastV: evaluation only
    check_devices(cfg.trainer)  # a GPU config on a machine without one
    tracking_uri(cfg)  # a tracking URI MLflow refuses
    expand_urls(cfg.data.train_shards)  # a missing shard
    if cfg.data.val_shards:
        expand_urls(cfg.data.val_shards)
    model = resolve(cfg.model)
    return replace(cfg, model=model.cfg), model


def _prepare_run_dir(cfg: RunConfig) -> Path | None:
    """The checkpoint to resume from (None: a fresh start, after forgetting a failed attempt);
    a resume must be of the same config. Writes the run's config.yaml."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resume_checkpoint(run_dir)
    if resume is None:
        _forget_failed_attempt(cfg)
    saved = run_dir / "config.yaml"
    if resume and saved.exists() and (conflicts := resume_conflicts(_as_trained(saved, cfg), cfg)):
        raise ConfigError(
            f"{resume} was trained with another config ({'; '.join(conflicts)}); a rerun resumes it "
            f"with its own model, data and optimiser. Use a new name=, or delete {run_dir} to start over"
        )
    saved.write_text(to_yaml(cfg))
    return resume


@dataclass
class _Parts:
    module: Any
    data: Any
    callbacks: list
    resume_step: int


def _build(cfg: RunConfig, resolved: Any, resume: Path | None) -> _Parts:
    """Model (from `init_from` on a fresh start), tokenizer, data and the Lightning module."""
    import lightning as L

    from eelight.data.text import check_template
    from eelight.data.tokenizer import load_tokenizer
    from eelight.models.vision import image_processor
    from eelight.training.data_module import ShardDataModule
    from eelight.training.distributed import checkpoint_step
    from eelight.training.module import MLLMModule
    from eelight.training.recipe import build_for_training

    resume_step = checkpoint_step(resume) if resume else 0
    L.seed_everything(cfg.seed, verbose=False)
    model = build_for_training(cfg, resolved, resume)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    try:
        check_template(tokenizer, cfg.data.template, cfg.data.system_prompt)
    except ValueError as exn:
        raise ConfigError(f"{exn} (tokenizer {cfg.data.tokenizer})") from exn
    processor = image_processor(cfg.model.vision, model.vision.image_size)
    data = ShardDataModule(cfg, tokenizer, processor, cfg.data.seed + resume_step)
    module = MLLMModule(model, cfg.stage, cfg.optim, cfg.trainer.max_steps, cfg.recipe)
    return _Parts(module, data, benchmark_callback(cfg, tokenizer, processor), resume_step)


def _logger(cfg: RunConfig, resume_step: int):
    """The stage's MLflow logger, on global rank 0 only (under srun every task starts at once,
    and two processes creating one SQLite store race on its schema); params on a fresh run."""
    from lightning.pytorch.utilities import rank_zero_only

    from eelight.tracking import lightning_logger

    if rank_zero_only.rank != 0:
        return False
    logger = lightning_logger(cfg)
    (cfg.run_dir / "mlflow_run_id").write_text(logger.run_id)
    if not resume_step and not cfg.mlflow.run_id:
        logger.log_hyperparams(flat_params(cfg))
    return logger


def _trainer(cfg: RunConfig, logger, callbacks: list):
    """Lightning's Trainer with eelight's checkpointing, strategy and progress line."""
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    from eelight.training.checkpoint import LoggedStepCheckpoint
    from eelight.training.distributed import checkpoint_plugins, make_strategy
    from eelight.training.progress import progress_callback

    t = cfg.trainer
    progress = [progress_callback(f"{cfg.name}/{cfg.stage}", t.max_steps, t.progress_every_s)
                ] if t.progress_every_s and rank_zero_only.rank == 0 else []
    checkpoint = LoggedStepCheckpoint(dirpath=cfg.run_dir, filename="step{step}", save_last=True, save_top_k=0,
                                      every_n_train_steps=t.ckpt_every_n_steps)
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=make_strategy(t), precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps, logger=logger,
        callbacks=[checkpoint, *callbacks, *progress], plugins=checkpoint_plugins(t), num_sanity_val_steps=0,
        limit_val_batches=0 if t.val_every_n_steps is None else None,
        val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None,
        enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=cfg.run_dir,  # where SLURM's auto-requeue writes hpc_ckpt_N.ckpt
    )


def _report(cfg: RunConfig, trainer, parts: _Parts, logger, stopped: str | None) -> dict[str, Any]:
    """The final validation (unless a callback stopped the run), result.json, the stage's files
    on its MLflow run; then the process group is released."""
    import torch

    from eelight.tracking import log_stage_files
    from eelight.training.distributed import release_process_group, shard_fraction

    module, run_dir = parts.module, cfg.run_dir
    metrics: dict[str, float] = {}
    if cfg.data.val_shards and not stopped:
        trainer.limit_val_batches = 1.0
        trainer.validate(module, datamodule=parts.data, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") or k.split("/")[0] in cfg.eval.benchmarks}
    samples = trainer.strategy.reduce(torch.tensor(module.samples_trained, device=trainer.strategy.root_device),
                                      reduce_op="sum")
    result = {"checkpoint": str((run_dir / "last.ckpt").resolve()), "mlflow_run_id": logger.run_id if logger else None,
              "metrics": metrics, "stop_reason": stopped, "bad_counts": module.bad_tracker.counts,
              "cut_by_max_length": module.cut_samples, "global_step": trainer.global_step,
              "world_size": trainer.world_size, "shard_fraction": shard_fraction(module.model),
              "resumed_from_step": parts.resume_step, "samples_per_s": module.samples_per_s,
              "samples_trained": int(samples.item()),  # every rank's, since the start or the resume
              "trainable_params": sum(p.numel() for p in module.model.parameters() if p.requires_grad)}
    if trainer.is_global_zero:
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
        log_stage_files(logger, [run_dir / "config.yaml", run_dir / "result.json"], result["checkpoint"],
                        cfg.mlflow.prefix)
    release_process_group(trainer.strategy)
    return result
