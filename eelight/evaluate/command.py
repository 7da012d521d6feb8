"""`eelight eval TARGET [benchmarks=[mmbench,textvqa]] [eval.data_root=...] [model.visual_attn=none]`

Scores a training run's folder or an exported folder on the chosen benchmarks, prints a
table, writes per-sample predictions (`predictions.jsonl`: question_id, prompt, prediction,
parsed, score; and the benchmark's rows with a `prediction` column, VLMEvalKit's layout)
and `results.json` under `--out` (default `TARGET/eval/<variant>`), and logs the metrics and
those files to MLflow: into the training run when TARGET is a run folder and the model is
unchanged; else into a new run (nested under the training run, when there is one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eelight.eval.runner import Asker, EvalResult, run_benchmark
from eelight.evaluate.target import Target


def evaluate_target(target: Target, benchmarks: list[str] | None = None) -> list[EvalResult]:
    from eelight.data.image import image_transform
    from eelight.data.text import template
    from eelight.eval.registry import check_names, make_evaluator

    cfg = target.eval
    names = list(benchmarks if benchmarks is not None else cfg.benchmarks)
    if not names:
        from eelight.errors import ConfigError

        raise ConfigError("no benchmark to score: pass benchmarks=[probe,mmbench,seed,textvqa,docvqa]")
    check_names(names)
    asker = Asker(target.model, target.tokenizer, image_transform(target.processor), template(target.template, target.tokenizer, target.system_prompt),
                  target.placement, cfg.batch_size, cfg.max_new_tokens)
    run = target.run_cfg
    return [run_benchmark(asker, make_evaluator(name, cfg, run.data.val_shards if run else None,
                                                run.data.val_samples if run else None))
            for name in names]


def table(results: list[EvalResult], label: str) -> str:
    lines = [f"eval of {label}",
             f"  {'benchmark':9s} {'protocol':10s} {'metric':9s} {'value':>7s} {'questions':>9s} "
             f"{'unparsed':>8s} {'q/s':>7s}"]
    for r in results:
        main = next(k for k in r.metrics if k.count("/") == 1 and not k.endswith("/unparsed"))
        n = len(r.records)
        lines.append(f"  {r.benchmark:9s} {r.protocol:10s} {main.split('/')[1]:9s} {r.metrics[main]:7.1%} "
                     f"{n:9d} {int(r.metrics[f'{r.benchmark}/unparsed']):8d} {n / max(r.seconds, 1e-9):7.1f}")
        for key, value in r.metrics.items():
            if key.count("/") == 2:
                lines.append(f"    {key.split('/', 2)[2]:40s} {value:7.1%}")
                lines += [f"      {sub.rsplit('/', 1)[1]:38s} {v:7.1%}" for sub, v in r.metrics.items()
                          if sub.startswith(key + "/")]  # a family's kinds of question
    return "\n".join(lines)


def write_outputs(results: list[EvalResult], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        folder = out / r.benchmark
        folder.mkdir(exist_ok=True)
        jsonl = folder / "predictions.jsonl"
        jsonl.write_text("".join(json.dumps(rec) + "\n" for rec in r.records))
        paths += [jsonl, r.evaluator.write_rows(r.items, r.predictions, folder / f"{r.benchmark}_rows")]
    summary = out / "results.json"
    summary.write_text(json.dumps({r.benchmark: {"protocol": r.protocol, "seconds": round(r.seconds, 2),
                                                 "questions": len(r.records), **r.metrics} for r in results},
                                  indent=1))
    return [summary, *paths]


def log_to_mlflow(target: Target, results: list[EvalResult], files: list[Path], out: Path) -> str:
    """Log metrics and files; returns the MLflow run id: the trained run's own (at its step),
    or, for a variant of it or an export, a new eval run nested under the trained run if any."""
    from eelight.tracking import Tracking
    from eelight.training.config import RunConfig

    metrics = {k: v for r in results for k, v in r.metrics.items()}
    cfg = target.run_cfg or RunConfig(name=target.label)
    tracking = Tracking.of(cfg)
    trained = None
    if target.run_dir and (target.run_dir / "mlflow_run_id").exists():
        trained = (target.run_dir / "mlflow_run_id").read_text().strip()
    if trained and not target.variant_overrides:
        run_id = trained
    else:
        name = f"{target.label} eval" + (f" {target.variant_label}" if target.variant_label else "")
        run_id = tracking.start_run(cfg.mlflow.experiment, name, tags={"eelight.role": "eval"}, parent=trained)
        tracking.log_params(run_id, dict(o.split("=", 1) for o in target.variant_overrides))
    tracking.log_metrics(run_id, metrics, step=target.step)
    tracking.log_files(run_id, [out], artifact_path=f"eval/{out.name}")
    if run_id != trained:
        tracking.finish(run_id)
    return run_id


def main(target_path: str, items: list[str], out: str | None = None, log: bool = True) -> dict[str, Any]:
    from eelight.evaluate.target import load_target

    target = load_target(target_path, items)
    results = evaluate_target(target)
    here = Path(target_path) if Path(target_path).is_dir() else Path(target_path).parent
    folder = Path(out) if out else here / "eval" / (_slug(target.variant_label) or "as_trained")
    files = write_outputs(results, folder)
    print(table(results, target.label + (f" ({target.variant_label})" if target.variant_label else "")))
    run_id = log_to_mlflow(target, results, files, folder) if log else None
    print(f"predictions: {folder}" + (f"   MLflow run: {run_id}" if run_id else ""))
    return {"metrics": {k: v for r in results for k, v in r.metrics.items()}, "out": str(folder), "mlflow_run_id": run_id}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label.replace("model.", "").replace("=", "-"))
