"""`eelight` command line.

    eelight train experiments/ee_mllm_tiny.yaml [more.yaml ...] [key=value ...]
    eelight backbones --probe data/probe --out .cache/backbones
    eelight demo [key=value ...]
    eelight eval runs/ee_mllm_tiny/instruct benchmarks=[mmbench,textvqa] [eval.data_root=...] [model.visual_attn=none]
    eelight sweep sweeps/weight_reuse.yaml [key=value ...] [--max-trials N] [--storage URL]
    eelight shortv runs/llava_tiny/instruct [--samples 40] [--freeze N]   # then: eelight eval RUN model_preset=shortv
    eelight services start|stop [--dir services]   # local PostgreSQL + MLflow server
    eelight report weight_reuse
    eelight export --study weight_reuse --out exported/ [--register NAME]
    eelight export --run runs/llava_tiny/instruct --out exported/llava_hf --format hf   # transformers LLaVA

What a user caused (`eelight.errors.UserError`: config keys and YAML syntax, missing or
truncated checkpoints and shards, bad benchmark files, too many bad samples) exits with
status 2 and one line that names the key, value or path.
"""

from __future__ import annotations

import argparse
import json
import sys

from eelight.errors import UserError, one_line


def _train(args: argparse.Namespace) -> None:
    from eelight.errors import ConfigError
    from eelight.sweeps.pruning import pruning_from_env
    from eelight.sweeps.stage_process import die_with_worker
    from eelight.training.config import load_run_config
    from eelight.training.run import train

    die_with_worker()

    yamls = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    if not yamls:
        raise ConfigError("eelight train needs an experiment file first, e.g. eelight train "
                          "experiments/ee_mllm_tiny.yaml [key=value ...] (or `make demo` for the whole demo)")
    result = train(load_run_config(yamls, overrides), pruning_from_env())
    print(json.dumps(result, indent=1))


def _backbones(args: argparse.Namespace) -> None:
    from eelight.training.backbones import BackboneConfig, build_backbones

    steps = {"lm_steps": args.lm_steps, "clip_steps": args.clip_steps, "seed": args.seed}
    cfg = BackboneConfig(**{k: v for k, v in steps.items() if v is not None})  # unset: the defaults
    print(json.dumps(build_backbones(args.probe, args.out, cfg)))


def _sweep(args: argparse.Namespace) -> None:
    from eelight.sweeps.config import load_sweep
    from eelight.sweeps.report import write_report
    from eelight.sweeps.runner import run_worker

    sweep = _with_out_dir(load_sweep(args.file, args.overrides), args)
    if args.check:
        _check_sweep(sweep)
        return
    from eelight.sweeps.runner import WorkerStopped

    try:
        summary = run_worker(sweep, args.max_trials)
    except WorkerStopped as stop:
        print(f"eelight: error: sweep {sweep.name} stopped by {stop}: its trial is marked FAIL and its point "
              "queued again; rerun the same command to go on", file=sys.stderr)
        sys.exit(128 + stop.signum)
    summary["report"] = str(write_report(sweep))
    print(json.dumps(summary))


def _check_sweep(sweep) -> None:
    from eelight.sweeps.inputs import check_inputs, plan

    print(plan(sweep))
    check_inputs(sweep, "")
    print(f"sweep {sweep.name}: every input the trials read is there (nothing was run)")


def _with_out_dir(sweep, args: argparse.Namespace):
    if args.out_dir:
        sweep.out_dir = args.out_dir
    if args.storage:
        sweep.storage = args.storage
    return sweep


def _sweep_file(name: str) -> str:
    return name if name.endswith((".yaml", ".yml")) else f"sweeps/{name}.yaml"


def _report(args: argparse.Namespace) -> None:
    from eelight.sweeps.config import load_sweep
    from eelight.sweeps.report import write_report

    sweep = _with_out_dir(load_sweep(_sweep_file(args.name), args.overrides), args)
    if args.pool:
        from eelight.sweeps.pooled import write_pooled_report

        print(write_pooled_report(sweep, args.pool))
        return
    print(write_report(sweep))


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    if args.register and args.format != "eelight":
        raise UserError("--register takes an eelight folder (the registered pyfunc loads it): drop --register "
                        "or use --format eelight")
    if bool(args.study) == bool(args.run):
        raise UserError("eelight export needs one of --study NAME (its best trial) or --run runs/<name>/<stage>")
    if args.run:
        from eelight.export import export_model
        from eelight.training.run import resume_checkpoint

        ckpt = resume_checkpoint(Path(args.run))
        if ckpt is None:
            raise UserError(f"{args.run} has no last.ckpt: pass a trained stage's folder (runs/<name>/<stage>)")
        print(json.dumps({"folder": str(export_model(Path(args.run) / "config.yaml", ckpt, args.out, None,
                                                     args.format))}))
        return
    from eelight.sweeps.best import best_trial_export
    from eelight.sweeps.config import load_sweep

    sweep = _with_out_dir(load_sweep(_sweep_file(args.study), args.overrides), args)
    print(json.dumps(best_trial_export(sweep, args.out, args.register, args.format)))


def _eval(args: argparse.Namespace) -> None:
    from eelight.evaluate.command import main

    main(args.target, args.overrides, out=args.out, log=not args.no_mlflow)


def _shortv(args: argparse.Namespace) -> None:
    from eelight.evaluate.shortv import calibrate

    print(json.dumps(calibrate(args.run, args.samples, args.freeze)))


def _services(args: argparse.Namespace) -> None:
    from eelight import services

    if args.action == "stop":
        services.stop(args.dir)
        print(f"stopped the services in {args.dir} (their data stays there)")
        return
    svc = services.start(args.dir, args.pg_port, args.mlflow_port)
    print(services.describe(svc))


def _demo(args: argparse.Namespace) -> None:
    from eelight.demo import main

    main(args.overrides)


def _study_commands(sub) -> None:
    """sweep, report, export, eval and shortv: the verbs of a study."""
    p = sub.add_parser("sweep", help="run (or resume, or join) an Optuna study from a sweep file")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", help="key=value applied to every trial")
    p.add_argument("--max-trials", type=int, default=None, help="stop this worker after N trials")
    p.add_argument("--check", action="store_true",
                   help="print the trials and check every input they read (backbones, shards, benchmark files); run nothing")
    p.set_defaults(fn=_sweep)
    p = sub.add_parser("report", help="write the table and plots of a sweep")
    p.add_argument("name", help="sweep name (sweeps/NAME.yaml) or a sweep file")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--pool", nargs="+", default=None, metavar="TRIALS_CSV",
                   help="also analyse earlier runs of this sweep (their report's trials.csv) with it: "
                        "written to report_pooled/")
    p.set_defaults(fn=_report)
    p = sub.add_parser("export", help="export the best trial of a sweep, or a run, as a self-contained folder")
    p.add_argument("--study", default=None, help="sweep name (sweeps/NAME.yaml) or a sweep file")
    p.add_argument("--run", default=None, help="or a trained stage's folder, runs/<name>/<stage>")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["eelight", "hf"], default="eelight",
                   help="eelight: eelight's folder (default); hf: transformers' LlavaForConditionalGeneration "
                        "(LLaVA-shaped models only)")
    p.add_argument("--register", default=None, help="also register it in the MLflow model registry")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_export)
    from eelight.eval.registry import benchmark_help

    p = sub.add_parser("eval", help="score a run folder or an export on benchmarks (MMBench, SEED, TextVQA, DocVQA)",
                       epilog=benchmark_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="runs/<name>/<stage> (config.yaml + last.ckpt) or an exported folder")
    p.add_argument("overrides", nargs="*", help="benchmarks=[...], eval.*, model.* (e.g. model.visual_attn=none)")
    p.add_argument("--out", default=None, help="where predictions go (default TARGET/eval/<variant>)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(fn=_eval)
    p = sub.add_parser("shortv", help="choose the layers ShortV freezes in a trained LLaVA run (writes RUN/shortv.json)")
    p.add_argument("run", help="runs/<name>/<stage> of a LLaVA run")
    p.add_argument("--samples", type=int, default=40, help="calibration samples from its training shards")
    p.add_argument("--freeze", type=int, default=None, help="layers to freeze (default: 19/32 of the depth)")
    p.set_defaults(fn=_shortv)


def _parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per verb, each calling its `_verb` function."""
    parser = argparse.ArgumentParser(prog="eelight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one stage from experiment YAMLs + dot-list overrides")
    p.add_argument("items", nargs="*", help="YAML files, then key=value overrides")
    p.set_defaults(fn=_train)
    p = sub.add_parser("backbones", help="pretrain (or reuse) the tiny LM and CLIP backbones")
    p.add_argument("--probe", default="data/probe")
    p.add_argument("--out", default=".cache/backbones")
    p.add_argument("--lm-steps", type=int, default=None, help="default 300")
    p.add_argument("--clip-steps", type=int, default=None, help="default 1200")
    p.add_argument("--seed", type=int, default=None,
                   help="default 0; another seed is another pair of backbones (use another --out)")
    p.set_defaults(fn=_backbones)
    _study_commands(sub)
    p = sub.add_parser("services", help="start/stop a local PostgreSQL (study storage) + MLflow server pair")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--dir", default="services", help="where their data, logs and addresses live")
    p.add_argument("--pg-port", type=int, default=5433)
    p.add_argument("--mlflow-port", type=int, default=5001)
    p.set_defaults(fn=_services)
    p = sub.add_parser("demo", help="probe -> backbones -> align -> instruct -> accuracy")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_demo)
    for name in ("sweep", "report", "export"):
        sub.choices[name].add_argument("--out-dir", default=None,
                                       help="where the study, trial runs and report live (default sweeps_out)")
        sub.choices[name].add_argument("--storage", default=None,
                                       help="the study's storage URL, instead of the sweep file's `storage:`")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    # key=value overrides may come before or after options: `sweep FILE --storage URL k=v`.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = getattr(args, "overrides", []) + extra
    try:
        args.fn(args)
    except (UserError, FileNotFoundError) as exn:
        print(f"eelight: error: {one_line(exn)}", file=sys.stderr)
        sys.exit(getattr(exn, "exit_code", 2))  # a run stopped by a signal: 128 + signal


if __name__ == "__main__":
    main()
