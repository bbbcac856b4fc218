"""Routing policies: what the router should optimise, as small frozen dataclasses with one text form.

Each policy mirrors one selector mode (`routoo_fast.selector`):

| policy                     | text form                 | selector call                        |
|----------------------------|---------------------------|--------------------------------------|
| `MaxQuality(max_cost)`     | `max_quality`, `max_cost=0.001` | `max_quality(Q, C, max_cost)`  |
| `MinCost(min_quality)`     | `min_quality=0.7`         | `min_cost(Q, C, min_quality)`        |
| `Tradeoff(lam)`            | `lambda=0.5`              | `tradeoff(Q, C, lam)`                |
| `Budget(total)`            | `budget=0.25`             | `budget(Q, C, total_budget)`         |

Every policy may also restrict the candidate models: `models=a|b|c` (text) or `models=("a", "b")`.
Several `key=value` pairs are joined with commas: `max_cost=0.002,models=gpt-4o|llama-3-70b`.
The same text is used on the command line (`--policy`), in the API (`"policy": "lambda=0.5"` or a JSON object
with the same keys) and in the server's model names (`router:lambda=0.5`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

__all__ = [
    "MaxQuality",
    "MinCost",
    "Tradeoff",
    "Budget",
    "Policy",
    "parse_policy",
    "policy_to_dict",
    "POLICY_KEYS",
]


def _models_field():
    return field(default=None, kw_only=True)


@dataclass(frozen=True)
class MaxQuality:
    """Highest predicted quality per prompt, among models whose expected cost is at most `max_cost` USD."""

    max_cost: float | None = None
    models: tuple[str, ...] | None = _models_field()

    def __post_init__(self):
        if self.max_cost is not None:
            _check_number("max_cost", self.max_cost, low=0.0)
        _check_models(self)

    def __str__(self) -> str:
        parts = [] if self.max_cost is None else [f"max_cost={_fmt(self.max_cost)}"]
        return _join(parts or ["max_quality"], self.models)


@dataclass(frozen=True)
class MinCost:
    """Cheapest model per prompt whose predicted quality is at least `min_quality` (in [0, 1])."""

    min_quality: float
    models: tuple[str, ...] | None = _models_field()

    def __post_init__(self):
        _check_number("min_quality", self.min_quality, low=0.0, high=1.0)
        _check_models(self)

    def __str__(self) -> str:
        return _join([f"min_quality={_fmt(self.min_quality)}"], self.models)


@dataclass(frozen=True)
class Tradeoff:
    """Per prompt, the model maximising `quality - lam * cost` (see `routoo_fast.selector.tradeoff` for units)."""

    lam: float
    models: tuple[str, ...] | None = _models_field()

    def __post_init__(self):
        _check_number("lambda", self.lam, low=0.0)
        _check_models(self)

    def __str__(self) -> str:
        return _join([f"lambda={_fmt(self.lam)}"], self.models)


@dataclass(frozen=True)
class Budget:
    """Highest total predicted quality over the whole batch with total expected cost at most `total` USD."""

    total: float
    models: tuple[str, ...] | None = _models_field()

    def __post_init__(self):
        _check_number("budget", self.total, low=0.0)
        _check_models(self)

    def __str__(self) -> str:
        return _join([f"budget={_fmt(self.total)}"], self.models)


Policy = Union[MaxQuality, MinCost, Tradeoff, Budget]

# text key -> (policy class, dataclass field); "models" is shared by all
POLICY_KEYS = {
    "max_cost": (MaxQuality, "max_cost"),
    "min_quality": (MinCost, "min_quality"),
    "lambda": (Tradeoff, "lam"),
    "budget": (Budget, "total"),
}
_BARE = {"max_quality": MaxQuality}


def parse_policy(spec: Any) -> Policy:
    """A policy from its text form, a mapping with the same keys, or a policy instance (returned as is).

    Raises ValueError naming the bad key or value (unknown key, two modes at once, NaN, out of range) and
    TypeError for anything that is not a str, mapping or policy.
    """
    if isinstance(spec, (MaxQuality, MinCost, Tradeoff, Budget)):
        return spec
    if isinstance(spec, str):
        return _from_items(_split_text(spec), source=repr(spec))
    if isinstance(spec, Mapping):
        return _from_items(list(spec.items()), source=repr(dict(spec)))
    raise TypeError(f"policy must be a string like 'lambda=0.5', a mapping or a policy object, "
                    f"got {type(spec).__name__}")


def policy_to_dict(policy: Policy) -> dict:
    """The JSON form of a policy: `{"lambda": 0.5}`, `{"max_cost": 0.001, "models": [...]}`, `{"max_quality": true}`."""
    out: dict[str, Any] = {}
    for key, (cls, attr) in POLICY_KEYS.items():
        if isinstance(policy, cls) and getattr(policy, attr) is not None:
            out[key] = getattr(policy, attr)
    if isinstance(policy, MaxQuality) and policy.max_cost is None:
        out["max_quality"] = True
    if policy.models is not None:
        out["models"] = list(policy.models)
    return out


def _split_text(text: str) -> list[tuple[str, str]]:
    text = text.strip()
    if not text:
        raise ValueError("policy is empty: expected e.g. 'lambda=0.5', 'max_cost=0.001', 'min_quality=0.7', "
                         "'budget=1.0'")
    items = []
    for part in text.split(","):
        part = part.strip()
        if part in _BARE:
            items.append((part, None))
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"policy part {part!r} is not key=value (known keys: {_known_keys()})")
        items.append((key.strip(), value.strip()))
    return items


def _from_items(items: list[tuple[Any, Any]], source: str) -> Policy:
    cls = None
    kwargs: dict[str, Any] = {}
    models = None
    for key, value in items:
        if key == "models":
            models = _parse_models(value)
            continue
        if key in _BARE:
            if value not in (None, True):
                raise ValueError(f"policy key {key!r} takes no value (or true), got {value!r}")
            new_cls, attr = _BARE[key], None
        elif key in POLICY_KEYS:
            new_cls, attr = POLICY_KEYS[key]
        else:
            raise ValueError(f"unknown policy key {key!r} in {source} (known keys: {_known_keys()})")
        if cls is not None and new_cls is not cls:
            raise ValueError(f"policy {source} mixes two modes ({cls.__name__} and {new_cls.__name__}); give one")
        cls = new_cls
        if attr is not None:
            if attr in kwargs:
                raise ValueError(f"policy key {key!r} given twice in {source}")
            kwargs[attr] = _parse_number(key, value)
    if cls is None:
        if models is None:
            raise ValueError(f"policy {source} is empty (known keys: {_known_keys()})")
        cls = MaxQuality
    return cls(**kwargs, models=models)


def _parse_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"policy {key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"policy {key} must be a number, got {value!r}") from None


def _parse_models(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        names = [v.strip() for v in value.split("|")]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise ValueError(f"policy models must be 'a|b|c' or a list of names, got {value!r}")
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"policy models must be non-empty model names, got {value!r}")
    return tuple(names)


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"policy {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"policy {name} must be finite, got {value}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"policy {name} must be {bounds}, got {value}")


def _check_models(policy) -> None:
    models = policy.models
    if models is None:
        return
    if not isinstance(models, (str, list, tuple)):
        raise TypeError(f"policy models must be a sequence of model names, got {type(models).__name__}")
    names = _parse_models(models)
    if len(set(names)) != len(names):
        raise ValueError(f"policy models has duplicates: {list(names)}")
    # frozen dataclass: store a tuple so the policy stays hashable and compares equal however it was given
    object.__setattr__(policy, "models", names)


def _fmt(x: float) -> str:
    return repr(float(x))


def _join(parts: list[str], models: tuple[str, ...] | None) -> str:
    if models is not None:
        parts = parts + ["models=" + "|".join(models)]
    return ",".join(parts)


def _known_keys() -> str:
    return ", ".join(list(_BARE) + list(POLICY_KEYS) + ["models"])
