"""pool_score: CPU fast path and eager reference against a float64 oracle, layouts, validation, backend choice."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast import _backend
from routoo_fast._reference import pool_score_reference
from routoo_fast.pool_score import masked_mean, pool_score


def make_weights(D, H, N, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if H is None:
        return {"W1": None, "b1": None, "E": torch.randn(N, D, generator=g, dtype=dtype),
                "b": torch.randn(N, generator=g)}
    return {"W1": torch.randn(H, D, generator=g, dtype=dtype) / math.sqrt(D),
            "b1": torch.randn(H, generator=g, dtype=dtype),
            "E": torch.randn(N, H, generator=g, dtype=dtype), "b": torch.randn(N, generator=g, dtype=dtype)}


def make_padded(B, T, D, seed=0, dtype=torch.float32, empty_rows=(0,)):
    """hidden [B, T, D] and an int mask with random lengths; rows in empty_rows have no real tokens."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g).to(dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    for r in empty_rows:
        if r < B:
            lengths[r] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return hidden, mask


def oracle(hidden, mask=None, cu_seqlens=None, **w):
    return pool_score_reference(hidden, mask, cu_seqlens=cu_seqlens, compute_dtype=torch.float64, **w)


SHAPES = [  # (B, T, D, H, N): the odd sizes T in {1, 7, 129}, D in {33, 384}, N in {1, 5, 17, 64}
    (3, 1, 33, 16, 1), (4, 7, 33, 8, 5), (2, 129, 384, 64, 17), (5, 7, 384, 64, 64),
    (3, 129, 33, None, 5), (2, 1, 384, None, 64), (1, 7, 33, 3, 17),
]


@pytest.mark.parametrize("act", ["gelu", "relu", "tanh", "identity"])
@pytest.mark.parametrize("B,T,D,H,N", SHAPES)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_padded_matches_float64_oracle(B, T, D, H, N, act, backend):
    hidden, mask = make_padded(B, T, D)
    w = make_weights(D, H, N)
    got = pool_score(hidden, mask, backend=backend, act=act, **w)
    assert got.dtype == torch.float32 and got.shape == (B, N)
    torch.testing.assert_close(got.double(), oracle(hidden, mask, act=act, **w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lengths", [[3, 0, 7, 1], [0], [129, 1, 0, 0, 5], [0, 0]])
@pytest.mark.parametrize("H", [16, None])
def test_ragged_matches_oracle_and_padded(lengths, H):
    D, N = 33, 5
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(sum(lengths), D, generator=g)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    w = make_weights(D, H, N)
    got = pool_score(flat, cu_seqlens=cu, backend="cpu", **w)
    torch.testing.assert_close(got.double(), oracle(flat, cu_seqlens=cu, **w), atol=1e-5, rtol=1e-5)
    # the same rows laid out padded give the same answer
    T = max(max(lengths), 1)
    padded = torch.full((len(lengths), T, D), 1e4)  # padding garbage must not leak in
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, (lo, n) in enumerate(zip(cu[:-1].tolist(), lengths)):
        padded[i, :n] = flat[lo:lo + n]
        mask[i, :n] = True
    torch.testing.assert_close(pool_score(padded, mask, backend="cpu", **w), got, atol=1e-6, rtol=1e-5)


def test_all_padding_row_is_pooled_zero():
    """A row with no real tokens is defined as pooled = 0, i.e. Q = sigmoid(E act(b1) + b), on every backend."""
    hidden, mask = make_padded(3, 7, 33, empty_rows=(1,))
    w = make_weights(33, 16, 5)
    expected = torch.sigmoid(torch.nn.functional.gelu(w["b1"]) @ w["E"].T + w["b"])
    for backend in ("cpu", "torch"):
        got = pool_score(hidden, mask, backend=backend, **w)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got[1], expected, atol=1e-6, rtol=1e-6)
    cu = torch.tensor([0, 0])
    torch.testing.assert_close(pool_score(torch.zeros(0, 33), cu_seqlens=cu, backend="cpu", **w)[0], expected)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.int64, torch.float32])
def test_mask_dtypes_nonzero_means_real(mask_dtype):
    hidden, mask = make_padded(4, 7, 33)
    w = make_weights(33, 8, 5)
    expected = oracle(hidden, mask, **w)
    torch.testing.assert_close(pool_score(hidden, mask.to(mask_dtype), backend="cpu", **w).double(), expected,
                               atol=1e-5, rtol=1e-5)


def test_mask_none_means_every_token_real():
    hidden, _ = make_padded(3, 7, 33)
    w = make_weights(33, 8, 5)
    ones = torch.ones(3, 7, dtype=torch.long)
    torch.testing.assert_close(pool_score(hidden, None, backend="cpu", **w),
                               pool_score(hidden, ones, backend="cpu", **w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    hidden, mask = make_padded(4, 129, 384, dtype=dtype)
    w = make_weights(384, 64, 17)
    got = pool_score(hidden, mask, backend="cpu", **w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), oracle(hidden, mask, **w), atol=1e-5, rtol=1e-5)


def test_noncontiguous_hidden():
    hidden, mask = make_padded(4, 7, 66)
    hidden = hidden[:, :, ::2]  # strided view, D = 33
    w = make_weights(33, 8, 5)
    torch.testing.assert_close(pool_score(hidden, mask, backend="cpu", **w).double(), oracle(hidden, mask, **w),
                               atol=1e-5, rtol=1e-5)


def test_masked_mean_matches_plain_mean():
    hidden, mask = make_padded(5, 9, 33, empty_rows=(2,))
    got = masked_mean(hidden, mask)
    for i in range(5):
        n = int(mask[i].sum())
        expected = hidden[i, :n].mean(0) if n else torch.zeros(33)
        torch.testing.assert_close(got[i], expected, atol=1e-6, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 5), T=st.integers(1, 12), D=st.integers(1, 40), H=st.one_of(st.none(), st.integers(1, 20)),
       N=st.integers(1, 9), act=st.sampled_from(["gelu", "relu", "tanh", "identity"]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_property_fast_path_matches_oracle_and_ignores_padding(B, T, D, H, N, act, seed, scale):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g) * scale
    mask = torch.rand(B, T, generator=g) < 0.6  # arbitrary masks, not only right padding; empty rows likely
    w = make_weights(D, H, N, seed=seed)
    got = pool_score(hidden, mask, backend="cpu", act=act, **w)
    assert ((got >= 0) & (got <= 1)).all()
    torch.testing.assert_close(got.double(), oracle(hidden, mask, act=act, **w), atol=2e-5, rtol=1e-4)
    # whatever sits under mask == 0 does not matter
    scrambled = torch.where(mask[..., None], hidden, torch.randn(B, T, D, generator=g) * 1e3)
    torch.testing.assert_close(pool_score(scrambled, mask, backend="cpu", act=act, **w), got, atol=1e-6, rtol=1e-5)


# --- validation -----------------------------------------------------------------------------------------------
def _good():
    hidden, mask = make_padded(2, 5, 8)
    return hidden, mask, make_weights(8, 4, 3)


@pytest.mark.parametrize("change,error,match", [
    (lambda h, m, w: (h[0], m, w), ValueError, "padded hidden must be"),
    (lambda h, m, w: (h.long(), m, w), TypeError, "hidden must be float32"),
    (lambda h, m, w: (h.numpy(), m, w), TypeError, "hidden must be a torch.Tensor"),
    (lambda h, m, w: (h, m[:, :4], w), ValueError, "mask must have shape"),
    (lambda h, m, w: (h, m.numpy(), w), TypeError, "mask must be a torch.Tensor"),
    (lambda h, m, w: (h, m, {**w, "W1": w["W1"][:, :7]}), ValueError, "W1 must be"),
    (lambda h, m, w: (h, m, {**w, "b1": w["b1"][:3]}), ValueError, "b1 must be"),
    (lambda h, m, w: (h, m, {**w, "W1": None}), ValueError, "b1 given without W1"),
    (lambda h, m, w: (h, m, {**w, "E": w["E"][:, :3]}), ValueError, "E must be"),
    (lambda h, m, w: (h, m, {**w, "b": w["b"][:2]}), ValueError, "b must be"),
    (lambda h, m, w: (h, m, {**w, "E": w["E"].long()}), ValueError, "E must be a 2-D floating-point"),
    (lambda h, m, w: (h, m, {**w, "act": "swish"}), ValueError, "act must be one of"),
])
def test_bad_inputs_raise_clear_errors(change, error, match):
    hidden, mask, w = change(*_good())
    with pytest.raises(error, match=match):
        pool_score(hidden, mask, **w)


@pytest.mark.parametrize("cu,match", [
    (torch.tensor([1, 3, 5]), "cu_seqlens must start at 0"),
    (torch.tensor([0, 4, 3, 5]), "non-decreasing"),
    (torch.tensor([0, 2, 4]), "end at total_tokens = 5"),
    (torch.tensor([[0, 5]]), "cu_seqlens must be 1-D"),
])
def test_bad_cu_seqlens(cu, match):
    with pytest.raises(ValueError, match=match):
        pool_score(torch.randn(5, 8), cu_seqlens=cu, **make_weights(8, 4, 3))


def test_ragged_layout_errors():
    w = make_weights(8, 4, 3)
    with pytest.raises(TypeError, match="cu_seqlens must be int32 or int64"):
        pool_score(torch.randn(5, 8), cu_seqlens=torch.tensor([0.0, 5.0]), **w)
    with pytest.raises(ValueError, match="not both"):
        pool_score(torch.randn(5, 8), torch.ones(1, 5), cu_seqlens=torch.tensor([0, 5]), **w)
    with pytest.raises(ValueError, match="ragged hidden must be"):
        pool_score(torch.randn(1, 5, 8), cu_seqlens=torch.tensor([0, 5]), **w)


# --- backend choice -------------------------------------------------------------------------------------------
def test_backend_automatic_choice(monkeypatch):
    monkeypatch.delenv("ROUTOO_BACKEND", raising=False)
    assert _backend.choose_backend("cpu") == "cpu"
    assert _backend.choose_backend(torch.device("cuda", 0)) == "triton"


def test_backend_env_override_and_argument_precedence(monkeypatch):
    monkeypatch.setenv("ROUTOO_BACKEND", "torch")
    assert _backend.choose_backend("cpu") == "torch"
    assert _backend.choose_backend("cpu", backend="cpu") == "cpu"
    monkeypatch.setenv("ROUTOO_BACKEND", " CPU ")
    assert _backend.choose_backend("cuda") == "cpu"
    monkeypatch.setenv("ROUTOO_BACKEND", "")
    assert _backend.choose_backend("cpu") == "cpu"


def test_backend_unknown_values_are_clear_errors(monkeypatch):
    monkeypatch.setenv("ROUTOO_BACKEND", "cuda")
    with pytest.raises(ValueError, match="environment variable ROUTOO_BACKEND must be one of"):
        _backend.choose_backend("cpu")
    monkeypatch.delenv("ROUTOO_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        pool_score(*_good()[:2], backend="numba", **_good()[2])


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        _backend.choose_backend("cpu", backend="triton")


def test_torch_backend_is_the_reference():
    hidden, mask, w = _good()
    assert torch.equal(pool_score(hidden, mask, backend="torch", **w), pool_score_reference(hidden, mask, **w))
