"""Policy parsing: text, mapping and object forms agree and round-trip; bad input names what was wrong."""
import math

import pytest
from hypothesis import given, strategies as st

from routoo_fast.policies import Budget, MaxQuality, MinCost, Tradeoff, parse_policy, policy_to_dict


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lambda=0.5", Tradeoff(0.5)),
        (" lambda = 2 ", Tradeoff(2.0)),
        ("max_quality", MaxQuality()),
        ("max_cost=0.001", MaxQuality(0.001)),
        ("min_quality=0.7", MinCost(0.7)),
        ("budget=1.25", Budget(1.25)),
        ("max_cost=0.002,models=gpt-4o|llama-3-70b", MaxQuality(0.002, models=("gpt-4o", "llama-3-70b"))),
        ("models=a|b", MaxQuality(models=("a", "b"))),
        ("lambda=0,models=a", Tradeoff(0.0, models=("a",))),
    ],
)
def test_parse_text(text, expected):
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    "mapping, expected",
    [
        ({"lambda": 0.5}, Tradeoff(0.5)),
        ({"max_quality": True}, MaxQuality()),
        ({"max_cost": "0.001"}, MaxQuality(0.001)),
        ({"min_quality": 0.7, "models": ["a", "b"]}, MinCost(0.7, models=("a", "b"))),
        ({"budget": 3}, Budget(3.0)),
    ],
)
def test_parse_mapping(mapping, expected):
    assert parse_policy(mapping) == expected


def test_policy_object_passes_through():
    p = Budget(1.0, models=["x", "y"])
    assert parse_policy(p) is p
    assert p.models == ("x", "y")  # lists are normalised to tuples: hashable, comparable
    assert hash(p) == hash(Budget(1.0, models=("x", "y")))


policies = st.one_of(
    st.builds(MaxQuality, st.one_of(st.none(), st.floats(0, 10))),
    st.builds(MinCost, st.floats(0, 1)),
    st.builds(Tradeoff, st.floats(0, 1e6)),
    st.builds(Budget, st.floats(0, 1e3)),
)
names = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,20}", fullmatch=True), min_size=1, max_size=4,
                 unique=True)


@given(policies, st.one_of(st.none(), names))
def test_round_trip(policy, models):
    if models is not None:
        fields = [getattr(policy, f) for f in policy.__dataclass_fields__ if f != "models"]
        policy = type(policy)(*fields, models=models)
    assert parse_policy(str(policy)) == policy
    assert parse_policy(policy_to_dict(policy)) == policy


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("", ValueError, "empty"),
        ("   ", ValueError, "empty"),
        ("lambda=abc", ValueError, "lambda must be a number"),
        ("lambda", ValueError, "not key=value"),
        ("temperature=1", ValueError, "unknown policy key 'temperature'"),
        ("lambda=0.5,min_quality=0.2", ValueError, "mixes two modes"),
        ("lambda=1,lambda=2", ValueError, "given twice"),
        ("min_quality=1.5", ValueError, r"min_quality must be in \[0.0, 1.0\]"),
        ("max_cost=-1", ValueError, "max_cost must be >= 0"),
        ("budget=inf", ValueError, "budget must be finite"),
        ("lambda=nan", ValueError, "lambda must be finite"),
        ("models=a|a", ValueError, "duplicates"),
        ("models=a||b", ValueError, "non-empty model names"),
        ({"lambda": None}, ValueError, "must be a number"),
        ({"lambda": True}, ValueError, "must be a number"),
        ({"max_quality": 3}, ValueError, "takes no value"),
        ({}, ValueError, "empty"),
        ({"models": 7}, ValueError, "models must be"),
        (0.5, TypeError, "policy must be a string"),
        (None, TypeError, "policy must be a string"),
    ],
)
def test_bad_policies(spec, error, match):
    with pytest.raises(error, match=match):
        parse_policy(spec)


def test_constructor_validates():
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        Tradeoff(-0.1)
    with pytest.raises(TypeError, match="must be a number"):
        MinCost("0.5")
    with pytest.raises(ValueError, match="finite"):
        Budget(math.inf)
