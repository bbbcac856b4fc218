"""The fused Triton pool+score kernel against the float64 torch oracle.

Without CUDA this runs the same kernel source in the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py):
fp32/fp16 only, tiny batches. The `gpu` tests run the compiled kernel, bf16 included, where CUDA exists.
"""
import math

import pytest
import torch

from routoo_fast._reference import pool_score_reference
from routoo_fast.pool_score import pool_score

triton = pytest.importorskip("triton")


def make_weights(D, H, N, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if H is None:
        w = {"W1": None, "b1": None, "E": torch.randn(N, D, generator=g), "b": torch.randn(N, generator=g)}
    else:
        w = {"W1": torch.randn(H, D, generator=g) / math.sqrt(D), "b1": torch.randn(H, generator=g),
             "E": torch.randn(N, H, generator=g), "b": torch.randn(N, generator=g)}
    return {k: None if v is None else v.to(device) for k, v in w.items()}


def make_padded(B, T, D, dtype, seed=0, device="cpu"):
    """Random right-padded lengths; row 0 has no real tokens (defined as pooled = 0)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return hidden.to(device=device, dtype=dtype), mask.to(device)


def oracle(hidden, mask=None, cu_seqlens=None, **w):
    return pool_score_reference(hidden, mask, cu_seqlens=cu_seqlens, compute_dtype=torch.float64, **w)


TOL = {torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}  # inputs are upcast exactly; fp32 sums

# Selected, not the full cross product: every odd T, D and N value appears, with each act and the no-W1 head.
PADDED_CASES = [  # (B, T, D, H, N, act, dtype)
    (2, 1, 33, 16, 1, "gelu", torch.float32),
    (3, 7, 33, 8, 5, "relu", torch.float32),
    (2, 129, 33, 64, 17, "tanh", torch.float32),
    (2, 7, 384, 64, 64, "gelu", torch.float32),
    (2, 129, 384, 64, 5, "identity", torch.float32),
    (2, 7, 384, None, 17, "gelu", torch.float32),
    (3, 1, 33, None, 64, "gelu", torch.float32),
    (2, 7, 33, 5, 17, "gelu", torch.float16),
    (2, 129, 384, 64, 64, "relu", torch.float16),
]


@pytest.mark.parametrize("B,T,D,H,N,act,dtype", PADDED_CASES)
def test_padded_matches_oracle(B, T, D, H, N, act, dtype):
    hidden, mask = make_padded(B, T, D, dtype)
    w = make_weights(D, H, N)
    got = pool_score(hidden, mask, backend="triton", act=act, **w)
    assert got.dtype == torch.float32 and got.shape == (B, N)
    torch.testing.assert_close(got.double(), oracle(hidden, mask, act=act, **w), atol=TOL[dtype], rtol=1e-4)


@pytest.mark.parametrize("lengths,D,H,N", [
    ([3, 0, 7, 1], 33, 16, 5),
    ([0], 33, 8, 1),
    ([129, 1, 0], 384, 64, 17),
    ([7, 0, 2], 33, None, 64),
])
def test_ragged_matches_oracle(lengths, D, H, N):
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(sum(lengths), D, generator=g)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    w = make_weights(D, H, N)
    got = pool_score(flat, cu_seqlens=cu, backend="triton", **w)
    torch.testing.assert_close(got.double(), oracle(flat, cu_seqlens=cu, **w), atol=2e-5, rtol=1e-4)


def test_strided_inputs_bool_mask_and_no_mask():
    hidden, mask = make_padded(3, 7, 66, torch.float32)
    hidden = hidden[:, :, ::2]  # D = 33, stride_hd = 2
    w = make_weights(33, 8, 5)
    w["W1"] = w["W1"].t().contiguous().t()  # column-major W1
    expected = oracle(hidden, mask, **w)
    torch.testing.assert_close(pool_score(hidden, mask.bool(), backend="triton", **w).double(), expected,
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(pool_score(hidden, None, backend="triton", **w).double(), oracle(hidden, None, **w),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 7])
def test_no_mask_single_token(T):
    hidden = torch.randn(3, T, 33)
    w = make_weights(33, 16, 5)
    torch.testing.assert_close(pool_score(hidden, None, backend="triton", **w).double(), oracle(hidden, None, **w),
                               atol=2e-5, rtol=1e-4)


def test_all_padding_rows_are_defined_and_agree_with_cpu_path():
    hidden = torch.randn(2, 7, 33)
    mask = torch.zeros(2, 7, dtype=torch.long)
    w = make_weights(33, 16, 5)
    got = pool_score(hidden, mask, backend="triton", **w)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, pool_score(hidden, mask, backend="cpu", **w), atol=1e-6, rtol=1e-6)


def test_empty_batch_and_width_limit():
    from routoo_fast.kernels.pool_score import MAX_WIDTH

    w = make_weights(8, 4, 3)
    assert pool_score(torch.zeros(0, 5, 8), torch.zeros(0, 5), backend="triton", **w).shape == (0, 3)
    wide = make_weights(8, MAX_WIDTH + 1, 3)
    with pytest.raises(ValueError, match="use backend='cpu'"):
        pool_score(torch.randn(1, 2, 8), None, backend="triton", **wide)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,T,D,H,N", [(64, 128, 384, 64, 16), (64, 128, 384, 64, 64), (7, 129, 33, None, 17),
                                       (33, 513, 1024, 256, 5)])
def test_cuda_padded_and_ragged_match_oracle(dtype, B, T, D, H, N):
    hidden, mask = make_padded(B, T, D, dtype, device="cuda")
    w = make_weights(D, H, N, device="cuda")
    got = pool_score(hidden, mask, **w)  # automatic choice on CUDA is the kernel
    torch.testing.assert_close(got.double(), oracle(hidden, mask, **w), atol=1e-4, rtol=1e-3)
    lengths = mask.sum(1)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    flat = hidden[mask.bool()]
    torch.testing.assert_close(pool_score(flat, cu_seqlens=cu, **w), got, atol=1e-5, rtol=1e-4)
    one = hidden[:, :1]  # T == 1 without a mask: the token count is the runtime T
    torch.testing.assert_close(pool_score(one, None, **w).double(), oracle(one, None, **w), atol=1e-4, rtol=1e-3)
