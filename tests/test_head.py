"""ScoringHead: the contract's parameter names and shapes, the math per activation, argument checks."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.head import ACTIVATIONS, ScoringHead


def test_parameter_names_and_shapes_are_the_contract():
    head = ScoringHead(33, 5, hidden=16)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"W1": (16, 33), "b1": (16,), "E": (5, 16), "b": (5,)}
    assert (head.d_in, head.n_models, head.hidden, head.act, head.width) == (33, 5, 16, "gelu", 16)


def test_no_hidden_layer_is_identity_features():
    head = ScoringHead(33, 5, hidden=None)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {"E": (5, 33), "b": (5,)}
    assert head.act == "identity" and head.width == 33
    x = torch.randn(4, 33)
    torch.testing.assert_close(head(x), x @ head.E.detach().T + head.b.detach())


def _manual(x, head):
    z = x @ head.W1.detach().T + head.b1.detach()
    z = {"gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))), "relu": lambda v: v.clamp(min=0),
         "tanh": torch.tanh, "identity": lambda v: v}[head.act](z)
    return z @ head.E.detach().T + head.b.detach()


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_forward_is_the_formula(act):
    torch.manual_seed(0)
    head = ScoringHead(33, 7, hidden=9, act=act)
    with torch.no_grad():
        head.b.normal_()
    x = torch.randn(6, 33)
    torch.testing.assert_close(head(x), _manual(x, head), atol=1e-6, rtol=1e-5)
    probs = head.probs(x)
    torch.testing.assert_close(probs, torch.sigmoid(_manual(x, head)), atol=1e-6, rtol=1e-5)
    assert ((probs > 0) & (probs < 1)).all()


def test_init_is_seeded_and_gradients_flow():
    torch.manual_seed(1)
    a = ScoringHead(10, 3)
    torch.manual_seed(1)
    b = ScoringHead(10, 3)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert torch.count_nonzero(a.b) == 0
    a(torch.randn(2, 10)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())


def test_scoring_weights_are_detached_views_of_the_parameters():
    head = ScoringHead(10, 3, hidden=4, act="tanh")
    w = head.scoring_weights()
    assert w["act"] == "tanh" and not w["W1"].requires_grad and w["W1"].data_ptr() == head.W1.data_ptr()
    assert ScoringHead(10, 3, hidden=None).scoring_weights()["W1"] is None


@pytest.mark.parametrize("kwargs,match", [
    ({"d_in": 0, "n_models": 3}, "d_in must be a positive int"),
    ({"d_in": 4, "n_models": -1}, "n_models must be a positive int"),
    ({"d_in": 4, "n_models": True}, "n_models must be a positive int"),
    ({"d_in": 4, "n_models": 3, "hidden": 0}, "hidden must be a positive int or None"),
    ({"d_in": 4, "n_models": 3, "act": "swish"}, "act must be one of"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoringHead(**kwargs)


def test_bad_forward_inputs():
    head = ScoringHead(8, 3)
    with pytest.raises(ValueError, match=r"pooled must have shape \[B, 8\]"):
        head(torch.randn(2, 7))
    with pytest.raises(TypeError, match="floating-point"):
        head(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        head([[0.0] * 8])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["gelu", "relu", "tanh", "identity", None]), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_probs_numpy_matches_probs(act, batch, seed):
    """The numpy forward (small batches behind ONNX encoders) is the torch forward within float32 rounding."""
    torch.manual_seed(seed)
    head = ScoringHead(12, 5, hidden=None if act is None else 7, act=act or "gelu")
    with torch.no_grad():
        head.b.uniform_(-2, 2)
    x = torch.randn(batch, 12) * 3
    with torch.no_grad():
        expected = head.probs(x).numpy()
    got = head.probs_numpy(x.numpy())
    assert got.dtype == np.float32 and got.shape == (batch, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_probs_numpy_refuses_the_wrong_input():
    head = ScoringHead(4, 2, hidden=3)
    with pytest.raises(ValueError, match="float32"):
        head.probs_numpy(np.zeros((1, 4), dtype=np.float64))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        head.probs_numpy(np.zeros((1, 5), dtype=np.float32))


def test_probs_numpy_follows_the_parameters():
    """The kept numpy weights are views: an in-place update shows at once; a replaced parameter or a dtype
    round trip (Module.to may swap storage) is picked up; a float64 head is refused, not silently cast."""
    torch.manual_seed(0)
    head = ScoringHead(6, 3, hidden=4)
    x = torch.randn(2, 6)

    def check():
        with torch.no_grad():
            np.testing.assert_allclose(head.probs_numpy(x.numpy()), head.probs(x).numpy(), rtol=1e-5, atol=1e-6)

    check()
    with torch.no_grad():
        head.W1.mul_(3.0)  # training updates in place
        head.b.add_(0.5)
    check()
    head.E = torch.nn.Parameter(torch.randn(3, 4))
    check()
    head.to(torch.float64)
    with pytest.raises(RuntimeError, match="float32 head on the CPU"):
        head.probs_numpy(x.numpy())
    head.to(torch.float32)
    with torch.no_grad():
        head.b1.add_(1.0)
    check()
