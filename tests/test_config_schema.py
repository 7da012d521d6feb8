"""Every field of the run and sweep schemas, drawn by Hypothesis (issue 28, must-show 3).

The rules below are this test's own table, written from the issue (counts and sizes >= 1, rates
>= 0, probabilities in [0, 1], seeds in numpy's range, enums) and from what each value means,
not read from the implementation: a valid value builds the config and is kept; an invalid one
is a `ConfigError` whose one line names the key. A field added to a schema without a row here
fails `test_the_table_covers_every_field`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eelight.training.config import ConfigError, RunConfig, flat_params, load_run_config

SEED = (0, 2**32 - 1)
INF = float("inf")
# key -> ("int" | "float", low, high, optional) or ("choice", values, optional) or ("free",) / ("bool",)
# or ("needs_others",): a string that is refused when set alone
RUN_RULES: dict[str, tuple] = {
    "name": ("free",), "out_dir": ("free",), "init_from": ("free",),
    "stage": ("choice", ["align", "instruct"], False),
    "seed": ("int", *SEED, False),
    "model_preset": ("choice", ["ee_mllm", "llava", "ee_mllm_f", "flamingo", "ee_mllm_fresh", "ee_mllm_fresh_random",
                                "ee_mllm_no_aligner", "llava_no_ffn", "ee_mllm_proj1", "ee_mllm_proj3",
                                "ee_mllm_pool2", "ee_mllm_blind"], False),
    "model.arch": ("variant", ["decoder", "flamingo"]),
    "model.visual_attn": ("variant", ["none", "self"]),
    "model.aligner": ("variant", ["reuse", "fresh", "none", "mlp"]),
    "model.aligner_init": ("variant", ["copy", "random"]),
    "model.aligner_ffn": ("variant", [True, False]),
    "model.projector_depth": ("int", 1, INF, False), "model.visual_pool": ("int", 1, INF, False),
    "model.blind": ("bool",), "model.cross_every": ("int", 1, INF, False),
    "model.attn_impl": ("choice", ["auto", "sdpa", "flash", "flex"], False), "model.compile": ("bool",),
    "model.compile_mode": ("choice", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                           False),
    "model.text_visual_layers": ("variant", ["all", "vica", "0", "0,1", "-1"]),
    "model.visual_reads_question": ("variant", [True, False]),
    "model.kv_only_layers": ("variant", ["none", "auto", "0", "1,-1"]),
    "model.prune_after": ("int", 0, INF, False), "model.prune_ratio": ("float<", 0, 1, False),
    "model.llm.path": ("free",), "model.llm.vocab_size": ("int", 1, INF, False),
    "model.llm.hidden_size": ("int", 1, INF, False), "model.llm.intermediate_size": ("int", 1, INF, False),
    "model.llm.num_layers": ("int", 1, INF, False), "model.llm.num_heads": ("int", 1, INF, False),
    "model.llm.num_kv_heads": ("int", 1, INF, False), "model.llm.head_dim": ("int", 1, INF, True),
    "model.llm.rms_norm_eps": ("float>", 0, INF, False), "model.llm.max_positions": ("int", 1, INF, False),
    "model.llm.rope_theta": ("float>", 0, INF, False),
    "model.llm.rope_type": ("choice", ["default", "linear", "llama3"], False),
    "model.llm.rope_factor": ("float>", 0, INF, False), "model.llm.rope_low_freq_factor": ("float>", 0, INF, False),
    "model.llm.rope_high_freq_factor": ("float>", 0, INF, False),
    "model.llm.rope_original_max_positions": ("int", 1, INF, False),
    "model.llm.qkv_bias": ("bool",), "model.llm.qk_norm": ("bool",), "model.llm.tie_embeddings": ("bool",),
    "model.vision.path": ("free",), "model.vision.siglip_path": ("needs_others",),
    "model.vision.kind": ("choice", ["clip", "siglip", "dinov2", "dinosiglip"], False),
    "model.vision.registers": ("int", 0, INF, False),
    "model.vision.image_size": ("int", 1, INF, False), "model.vision.patch_size": ("int", 1, INF, False),
    "model.vision.hidden_size": ("int", 1, INF, False), "model.vision.intermediate_size": ("int", 1, INF, False),
    "model.vision.num_layers": ("int", 1, INF, False), "model.vision.num_heads": ("int", 1, INF, False),
    "model.vision.feature_layer": ("int", -3, 2, False),  # 2 layers: 3 hidden states
    "model.vision.feature_select": ("choice", ["patch", "full"], False),
    "data.train_shards": ("free",), "data.val_shards": ("free",), "data.tokenizer": ("free",),
    "data.template": ("free",), "data.system_prompt": ("free",),
    "data.image_placement": ("choice", ["marker", "start"], False),
    "data.max_length": ("int", 1, INF, False), "data.batch_size": ("int", 1, INF, False),
    "data.shuffle": ("int", 0, INF, False), "data.seed": ("int", *SEED, False),
    "data.subset": ("int", 1, INF, True), "data.epoch_batches": ("int", 1, INF, True), "data.resampled": ("bool",),
    "data.num_workers": ("int", 0, INF, False), "data.max_bad_samples": ("int", 0, INF, True),
    "data.max_bad_fraction": ("float", 0, 1, True), "data.val_samples": ("int", 1, INF, False),
    "optim.lr": ("float", 0, INF, False), "optim.projector_lr": ("float", 0, INF, False),
    "optim.new_params_lr": ("float", 0, INF, False), "optim.weight_decay": ("float", 0, INF, False),
    "optim.warmup_steps": ("int", 0, INF, False), "optim.min_lr_ratio": ("float", 0, 1, False),
    "optim.betas": ("betas",),
    "trainer.max_steps": ("int", 1, INF, False),
    "trainer.accelerator": ("choice", ["cpu", "gpu", "cuda", "auto"], False),
    "trainer.devices": ("int", 1, INF, False), "trainer.num_nodes": ("int", 1, INF, False),
    "trainer.strategy": ("choice", ["auto", "ddp", "ddp_spawn", "fsdp"], False),
    "trainer.precision": ("choice", ["32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
                                     "64"], False),
    "trainer.accumulate_grad_batches": ("int", 1, INF, False), "trainer.gradient_clip_val": ("float", 0, INF, True),
    "trainer.log_every_n_steps": ("int", 1, INF, False), "trainer.ckpt_every_n_steps": ("int", 1, INF, False),
    "trainer.val_every_n_steps": ("int", 1, INF, True), "trainer.progress_every_s": ("float", 0, INF, False),
    "trainer.threads": ("int", 1, INF, True),
    "mlflow.tracking_uri": ("free",), "mlflow.experiment": ("free",), "mlflow.parent_run_id": ("free",),
    "mlflow.run_id": ("free",), "mlflow.prefix": ("free",),
    "eval.benchmarks": ("benchmarks",), "eval.data_root": ("free",), "eval.limit": ("int", 1, INF, True),
    "eval.batch_size": ("int", 1, INF, False), "eval.max_new_tokens": ("int", 1, INF, False),
    "eval.seed_protocol": ("choice", ["likelihood", "generation"], False), "eval.textvqa_ocr": ("free",),
    **{f"eval.{b}.{k}": ("free",) for b in ("probe", "mmbench", "seed", "textvqa", "docvqa") for k in ("file", "images")},
    # the training recipe (issue 31): per component stage / frozen / full / lora (LLM and tower only)
    "recipe.llm": ("choice", ["stage", "frozen", "full", "lora"], False),
    "recipe.vision": ("choice", ["stage", "frozen", "full", "lora"], False),
    "recipe.projector": ("choice", ["stage", "frozen", "full"], False),
    "recipe.new": ("choice", ["stage", "frozen", "full"], False),
    "recipe.lora.rank": ("int", 1, INF, False), "recipe.lora.alpha": ("float>", 0, INF, False),
    "recipe.lora.dropout": ("float<", 0, 1, False), "recipe.lora.target_modules": ("names",),
}
BENCHMARKS = ["probe", "mmbench", "seed", "textvqa", "docvqa"]


def _numbers(rule: tuple):
    kind, low, high, optional = rule
    edges = [v for v in (low, high) if v not in (INF, -INF)]
    if kind == "int":
        near = [e + d for e in edges for d in (-1, 0, 1)]
        drawn = st.integers(-5, 40) | st.sampled_from(near)
    else:
        near = [e + d for e in edges for d in (-1e-3, 0.0, 1e-3)]
        drawn = st.floats(-2.0, 5.0, allow_nan=False) | st.sampled_from(near)
    return (drawn | st.none()) if optional else drawn


def _value(rule: tuple):
    kind = rule[0]
    if kind in ("int", "float", "float>", "float<"):
        return _numbers(rule)
    if kind in ("choice", "variant"):
        return st.sampled_from(list(rule[1]) + ["bogus", "NONE"])
    if kind == "bool":
        return st.booleans()
    if kind == "betas":
        return st.tuples(st.floats(-0.5, 1.5, allow_nan=False), st.floats(-0.5, 1.5, allow_nan=False))
    if kind == "benchmarks":
        return st.lists(st.sampled_from(BENCHMARKS + ["nope"]), max_size=3, unique=True)
    if kind == "names":
        return st.lists(st.sampled_from(["q_proj", "v_proj", "fc1"]), max_size=3, unique=True)
    return st.from_regex(r"[a-z][a-z0-9_./-]{0,7}", fullmatch=True)  # a plain YAML string on a dot-list


def _valid(key: str, rule: tuple, value) -> bool | None:
    """The table's verdict (None: a valid choice that may still make an undefined variant)."""
    kind = rule[0]
    if kind in ("int", "float", "float>", "float<"):
        _, low, high, optional = rule
        if value is None:
            return optional
        ok = {"float>": value > low, "float<": low <= value < high}.get(kind, low <= value <= high)
        return ok and _cross_ok(key, value)
    if kind == "choice":
        return value in rule[1]
    if kind == "needs_others":  # valid only with other fields set too (siglip_path: kind=dinosiglip, path)
        return False
    if kind == "variant":
        return None if value in rule[1] else False
    if kind == "betas":
        return all(0 <= b < 1 for b in value)
    if kind == "benchmarks":
        return "nope" not in value
    if kind == "names":
        return len(value) > 0
    if key == "name":
        return "/" not in value and value not in (".", "..")
    return True


def _cross_ok(key: str, value) -> bool:
    """Rules between fields, against the other fields' defaults: heads divide the width (64, 4
    heads, 2 KV heads), the patch divides the image (32, patch 8), the vision tower's 2 layers."""
    return {
        "model.llm.hidden_size": lambda v: v % 4 == 0,
        "model.llm.num_heads": lambda v: 64 % v == 0 and v % 2 == 0,
        "model.llm.num_kv_heads": lambda v: 4 % v == 0,
        "model.vision.image_size": lambda v: v % 8 == 0,
        "model.vision.patch_size": lambda v: 32 % v == 0,
        "model.vision.num_layers": lambda v: v >= 1,  # feature_layer=-2 needs 1 layer at least
    }.get(key, lambda v: True)(value)


def _override(key: str, value) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, tuple | list):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def test_the_table_covers_every_field():
    assert set(flat_params(RunConfig())) == set(RUN_RULES)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(RUN_RULES)).flatmap(lambda k: st.tuples(st.just(k), _value(RUN_RULES[k]))))
def test_every_run_config_field_builds_when_valid_and_names_its_key_when_not(drawn):
    key, value = drawn
    rule = RUN_RULES[key]
    expected = _valid(key, rule, value)
    try:
        cfg = load_run_config([], [_override(key, value)])
    except ConfigError as exn:
        message = str(exn)
        assert len(message.splitlines()) == 1
        assert expected is not True, f"{key}={value!r} is valid by the table but refused: {message}"
        named = key.rsplit(".", 1)[-1] if rule[0] == "variant" else key
        assert named in message or (rule[0] == "variant" and "has no defined meaning" in message), message
        return
    assert expected is not False, f"{key}={value!r} is invalid by the table but built"
    if rule[0] in ("int", "float", "float>", "choice", "bool") and key != "model_preset":
        built = flat_params(cfg)[key]
        assert built == value or (value is not None and float(built) == float(value)), (key, built, value)


SWEEP_RULES: dict[str, tuple] = {
    "trials_per_point": ("int", 1, INF, False),
    "seeds": ("list", 0, 2**32 - 1),
    "data_sizes": ("list", 1, INF),
    "sampler": ("choice", ["tpe", "random"], False),
    "pruner": ("choice", ["none", "median"], False),
    "objective.direction": ("choice", ["maximize", "minimize"], False),
    "stages": ("stages",),
    "space.optim.lr.type": ("choice", ["grid", "categorical", "int", "float"], False),
}


def _sweep_value(rule: tuple):
    if rule[0] == "list":
        return st.lists(st.integers(-3, 2000), min_size=1, max_size=3)
    if rule[0] == "stages":
        return st.lists(st.sampled_from(["align", "instruct", "pretrain"]), min_size=1, max_size=2, unique=True)
    return _value(rule)


def _sweep_valid(key: str, rule: tuple, value) -> bool:
    if rule[0] == "list":
        return all(rule[1] <= v <= rule[2] for v in value)
    if rule[0] == "stages":
        return all(s in ("align", "instruct") for s in value)
    if key == "space.optim.lr.type":  # the space below gives `values` only: grid and categorical use them
        return value in ("grid", "categorical")
    return _valid(key, rule, value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(SWEEP_RULES)).flatmap(lambda k: st.tuples(st.just(k), _sweep_value(SWEEP_RULES[k]))))
def test_every_sweep_field_builds_when_valid_and_names_its_key_when_not(tmp_path, drawn):
    import yaml

    from eelight.sweeps.config import load_sweep

    key, value = drawn
    doc = {"name": "schema", "experiment": [], "stage_configs": {}, "objective": {"metric": "val/loss"},
           "space": {"optim.lr": {"type": "grid", "values": [0.001]}}}
    node = doc
    *parents, leaf = key.split(".") if not key.startswith("space.") else ["space", "optim.lr", "type"]
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = list(value) if isinstance(value, tuple) else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    expected = _sweep_valid(key, SWEEP_RULES[key], value)
    try:
        sweep = load_sweep(str(path))
    except ConfigError as exn:
        assert len(str(exn).splitlines()) == 1
        assert not expected, f"{key}={value!r} refused: {exn}"
        assert leaf in str(exn) or key in str(exn), str(exn)
        return
    assert expected, f"{key}={value!r} built"
    got = sweep
    for part in key.split(".") if not key.startswith("space.") else []:
        got = getattr(got, part)
    if not key.startswith("space."):
        assert got == value or list(got) == list(value)


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"), ("trainer.max_steps=-5", "trainer.max_steps"),
    ("optim.lr=-1", "optim.lr"), ("data.max_length=0", "data.max_length"),
])
def test_out_of_range_values_stop_the_cli_before_mlflow(tmp_path, capsys, override, key):
    from eelight.cli import main

    db = tmp_path / "mlflow.db"
    with pytest.raises(SystemExit) as stop:
        main(["train", "experiments/ee_mllm_tiny.yaml", override, f"mlflow.tracking_uri=sqlite:///{db}",
              f"out_dir={tmp_path / 'runs'}", "name=x"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and key in err, err
    assert not db.exists() and not (tmp_path / "runs").exists()  # nothing logged, nothing written
