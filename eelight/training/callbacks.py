"""Lightning callbacks a training run takes besides its checkpoints:

- `StoppingCallback`: the base of a callback that may stop a run early and says why
  (`stop_reason`: a sweep's pruner, `sweeps/pruning.py`); `train` returns the reason;
- `BenchmarkScoring`: the benchmarks in `eval.benchmarks`, scored on the model being trained
  at the end of each validation of an instruct stage (metrics `<benchmark>/<metric>[/<category>]`).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from eelight.training.config import RunConfig
from eelight.training.stages import STAGE_TABLE


class StoppingCallback(Callback):
    """A callback that can end training early; `stop_reason` says why once it did."""

    stop_reason: str | None = None


def stop_reason(callbacks: list) -> str | None:
    """Why a stopping callback ended the run, if one did."""
    return next((c.stop_reason for c in callbacks if isinstance(c, StoppingCallback) and c.stop_reason), None)


class BenchmarkScoring(Callback):
    """Scores `eval.benchmarks` after each validation; their files are read when it is built,
    so a bad benchmark file stops the run before training, not after it."""

    def __init__(self, cfg: RunConfig, tokenizer, processor) -> None:
        from eelight.eval.registry import make_evaluator

        self.cfg, self.tokenizer, self.processor = cfg, tokenizer, processor
        self.evaluators = [make_evaluator(name, cfg.eval, cfg.data.val_shards, cfg.data.val_samples)
                           for name in cfg.eval.benchmarks]
        for evaluator in self.evaluators:
            evaluator.load()

    def scores(self, model) -> dict[str, float]:
        from eelight.data.image import image_transform
        from eelight.data.text import template
        from eelight.eval.runner import Asker, run_benchmark

        d, e = self.cfg.data, self.cfg.eval
        asker = Asker(model, self.tokenizer, image_transform(self.processor),
                      template(d.template, self.tokenizer, d.system_prompt), d.image_placement, e.batch_size,
                      e.max_new_tokens)
        return {k: v for ev in self.evaluators for k, v in run_benchmark(asker, ev).metrics.items()}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        for key, value in self.scores(model).items():
            pl_module.log(key, value, prog_bar=key.count("/") == 1, sync_dist=True)
        model.train(was_training)


def benchmark_callback(cfg: RunConfig, tokenizer, processor) -> list[Callback]:
    """The scoring callback of an instruct stage with `eval.benchmarks`, else none."""
    if not STAGE_TABLE[cfg.stage].scores_benchmarks or not cfg.eval.benchmarks:
        return []
    return [BenchmarkScoring(cfg, tokenizer, processor)]
