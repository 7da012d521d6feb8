"""The allowed range of every number and the choices of every enum in eelight's typed configs,
declared on the field itself and checked by one walker when the config is built.

    batch_size: int = at_least(1, 16)           # counts and sizes: 0 is meaningless
    lr: float = at_least(0.0, 1e-3)             # rates: 0 freezes, < 0 trains uphill
    max_bad_fraction: float | None = between(0.0, 1.0, 0.05)   # probabilities
    seed_protocol: str = one_of(("likelihood", "generation"), "likelihood")

`check_fields(cfg, "data")` raises `ValueError("data.batch_size=0 must be >= 1 ...")` naming
the full key; `None` passes where the field allows it (an optional value). A list or tuple
value is checked item by item (`betas`, a sweep's `seeds`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# numpy's and torch's seeding accept exactly this range (Lightning warns and draws a random seed
# outside it: a silently unseeded run).
SEED_MAX = 2**32 - 1


def at_least(lo: float, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    return _field(default, {"min": lo}, **kw)


def above(lo: float, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """Strictly greater (an epsilon, a RoPE base, a scale factor)."""
    return _field(default, {"above": lo}, **kw)


def between(lo: float, hi: float, default: Any = dataclasses.MISSING, *, below_hi: bool = False, **kw: Any) -> Any:
    return _field(default, {"min": lo, "max": hi, "below_hi": below_hi}, **kw)


def one_of(choices: Sequence[Any], default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    return _field(default, {"choices": tuple(choices)}, **kw)


def nonempty(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    return _field(default, {"nonempty": True}, **kw)


def seed_field(default: int = 0) -> Any:
    return between(0, SEED_MAX, default)


def _field(default: Any, rule: dict[str, Any], default_factory: Any = dataclasses.MISSING) -> Any:
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"rule": rule})
    return dataclasses.field(default=default, metadata={"rule": rule})


def problem(value: Any, rule: dict[str, Any]) -> str | None:
    """Why `value` breaks `rule` (None: it keeps it). Lists and tuples: item by item."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return next((p for p in (problem(v, rule) for v in value) if p), None)
    if "choices" in rule:
        return None if value in rule["choices"] else f"is not allowed; choose one of {list(rule['choices'])}"
    if rule.get("nonempty"):
        return None if str(value).strip() else "is empty; give a value"
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return "is not a number"
    if "above" in rule and not value > rule["above"]:
        return f"must be > {rule['above']}"
    if "min" in rule and value < rule["min"]:
        return f"must be >= {rule['min']}" + (f" and <= {rule['max']}" if "max" in rule else "")
    if "max" in rule and (value > rule["max"] or (rule.get("below_hi") and value == rule["max"])):
        closing = "<" if rule.get("below_hi") else "<="
        return f"must be {closing} {rule['max']}" + (f" (and >= {rule['min']})" if "min" in rule else "")
    return None


def check_fields(cfg: Any, prefix: str) -> None:
    """Every ruled field of the dataclass `cfg` and of the dataclasses inside it; the first
    value out of range is a ValueError naming its full key, value and range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if "rule" in f.metadata and (why := problem(value, f.metadata["rule"])):
            raise ValueError(f"{key}={value!r} {why}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, key)
        elif isinstance(value, dict):
            for name, child in value.items():
                if dataclasses.is_dataclass(child) and not isinstance(child, type):
                    check_fields(child, f"{key}.{name}")
