"""The LightningModule: next-token loss on label-masked tokens, per-stage freezing,
parameter groups with their own learning rates, warmup + cosine schedule.

Stages (docs/DESIGN.md §2):
- align: projector + new parameters (aligner=fresh copies, Flamingo cross-attention
  and gates) train; the LLM and the vision tower are frozen.
- instruct: projector + the whole LLM (new parameters included) train; vision frozen.

On several ranks (DDP, FSDP) the loss is the mean over the *global* batch's supervised tokens,
not the mean of each rank's own mean: N ranks then train exactly as one process with the
same global batch would, whatever the tokens per rank (tests/test_two_nodes.py). Gradient
accumulation still weights micro-batches equally (Lightning divides each by their number).
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from eelight.data.loader import BadCountTracker
from eelight.models.mllm import IGNORE_INDEX, MLLM
from eelight.models.roles import parameter_roles
from eelight.training.config import OptimConfig
from eelight.training.stages import GROUPS, trained_roles


def parameter_groups(model: MLLM, stage: str, recipe=None) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by optimiser group for the stage and recipe (`training/stages.py`,
    by each parameter's role); sets requires_grad on every parameter."""
    trains = trained_roles(stage, recipe)
    groups: dict[str, list[torch.nn.Parameter]] = {g: [] for g in GROUPS}
    params = dict(model.named_parameters())
    for name, role in parameter_roles(model).items():
        group = trains.get(role)
        params[name].requires_grad_(group is not None)
        if group:
            groups[group].append(params[name])
    return {k: v for k, v in groups.items() if v}


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class MLLMModule(L.LightningModule):
    def __init__(self, model: MLLM, stage: str, optim: OptimConfig, max_steps: int, recipe=None) -> None:
        super().__init__()
        self.model, self.stage, self.optim_cfg, self.max_steps = model, stage, optim, max_steps
        self.recipe = recipe
        self.groups = parameter_groups(model, stage, recipe)
        # A LoRA recipe's checkpoints hold only what trains (training/recipe.py)
        self.partial = recipe is not None and recipe.uses_lora
        self._last_time: float | None = None
        self._first_time: float | None = None
        self._samples_after_first = 0
        self.samples_trained = 0  # this rank's, since this process started (a resumed run: since the resume)
        self.bad_tracker = BadCountTracker()
        self.cut_samples = 0  # this rank's samples whose text data.max_length cut (trained on what was left)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.bad_tracker.update(batch)
        self.cut_samples += int(batch.get("cut", 0))
        out = self.model(batch["input_ids"], batch["pixel_values"], labels=batch["labels"],
                         image_offset=batch.get("image_offset"), question_end=batch.get("question_end"))
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"loss is {out.loss.item()} at step {self.global_step}: stopping; the last good "
                "checkpoint (last.ckpt) is kept. Lower optim.lr or check the data"
            )
        now = time.perf_counter()
        b, n = batch["input_ids"].shape
        self.samples_trained += b  # the last batch of a pass over a subset is partial
        if self._first_time is None:
            self._first_time = now
        else:
            self._samples_after_first += b
        if self._last_time is not None:
            dt = now - self._last_time
            self.log("throughput/samples_per_s", b / dt)
            self.log("throughput/tokens_per_s", b * (n + self.model.num_visual_tokens) / dt)
        self._last_time = now
        loss, global_loss = self.global_token_mean(out.loss, batch["labels"])
        self.log("train/loss", global_loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        for kind, count in self.bad_tracker.counts.items():
            self.log(f"data/bad_{kind}", float(count))
        self.log("data/cut_by_max_length", float(self.cut_samples))
        return loss

    def global_token_mean(self, loss: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to backpropagate, the global batch's loss to log). This rank's mean over its
        n supervised tokens, scaled by n x world / (tokens on every rank): the ranks' gradients,
        averaged by DDP/FSDP, are the gradient of the global token mean."""
        world = self.trainer.world_size
        if world == 1:
            return loss, loss.detach()
        n = (labels[:, 1:] != IGNORE_INDEX).sum().to(loss.dtype)
        total = self.trainer.strategy.reduce(n.detach().clone(), reduce_op="sum")
        scaled = loss * n * world / total
        return scaled, self.trainer.strategy.reduce(scaled.detach().clone(), reduce_op="mean")

    @property
    def samples_per_s(self) -> float | None:
        """Mean training throughput of this process since its first step (data loading included)."""
        if self._first_time is None or self._last_time in (None, self._first_time):
            return None
        return self._samples_after_first / (self._last_time - self._first_time)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["input_ids"], batch["pixel_values"], labels=batch["labels"],
                         image_offset=batch.get("image_offset"), question_end=batch.get("question_end"))
        self.log("val/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def on_train_start(self) -> None:
        """A resumed run (`trainer.max_steps` may have been raised to train on) takes its learning
        rates from this run's schedule at the resumed step, not the checkpoint's optimizer: its
        rates were set by the old schedule, whose cosine ended at the old max_steps."""
        if self.trainer.global_step == 0:
            return
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            for group, base, rate in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
                group["lr"] = base * rate(sched.last_epoch)

    def configure_model(self) -> None:
        """FSDP2 under ModelParallelStrategy: one wrap unit per decoder layer, then the root;
        then model.compile (after sharding, as FSDP2 wants)."""
        mesh = self.device_mesh
        if mesh is not None:
            from torch.distributed.fsdp import fully_shard

            for layer in self.model.decoder.layers:
                fully_shard(layer, mesh=mesh["data_parallel"])
            fully_shard(self.model, mesh=mesh["data_parallel"])
        self.model.compile_decoder()

    def configure_optimizers(self):
        o = self.optim_cfg
        self.groups = parameter_groups(self.model, self.stage, self.recipe)  # after sharding: the new parameters
        lrs = {"projector": o.projector_lr, "new": o.new_params_lr, "llm": o.lr}
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": lrs[g], "name": g} for g, ps in self.groups.items()],
            weight_decay=o.weight_decay, betas=tuple(o.betas),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, o.warmup_steps, self.max_steps, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _trained_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        """What a checkpoint holds: everything, or for a LoRA recipe only what trains."""
        state = super().state_dict(*args, **kwargs)
        if not self.partial:
            return state
        keep = self._trained_keys()
        return type(state)((k, v) for k, v in state.items() if k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not self.partial:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        from eelight.training.recipe import check_partial

        check_partial(dict(state_dict), self._trained_keys(), "the checkpoint being resumed")
        return super().load_state_dict(state_dict, strict=False, assign=assign)
