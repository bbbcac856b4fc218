"""The Triton kernel compiles for a real GPU target (sm_90) without a GPU: lowering, dtypes (bf16 included, which
the interpreter cannot run) and every constexpr branch, with the launcher's own block sizes. Runs in a subprocess
because TRITON_INTERPRET (set by conftest.py) is read when the kernel is decorated."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from routoo_fast.kernels.pool_score import _pool_score_fwd_kernel as kernel, launch_config, _ACT_CODES

    names = list(kernel.arg_names)
    variants = [  # (ragged, has_mask, has_w1, act, hidden dtype, D, width, N)
        (False, True, True, "gelu", "bf16", 384, 64, 64),
        (False, True, True, "relu", "fp16", 384, 256, 17),
        (True, False, True, "tanh", "fp32", 33, 64, 5),
        (False, False, False, "identity", "bf16", 384, 64, 64),
        (True, False, True, "gelu", "bf16", 1024, 1024, 64),
    ]
    for ragged, has_mask, has_w1, act, dtype, d_in, width, n_models in variants:
        config = launch_config(d_in, width, n_models, has_w1)
        num_warps = config.pop("num_warps")
        consts = {"RAGGED": ragged, "HAS_MASK": has_mask, "HAS_W1": has_w1, "ACT": _ACT_CODES[act], **config}
        pointers = {"h_ptr": "*" + dtype, "mask_ptr": "*i64", "cu_ptr": "*i32"}
        signature = {n: "constexpr" if n in consts else pointers.get(n, "*fp32" if n.endswith("_ptr") else "i32")
                     for n in names}
        source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert compiled.asm["cubin"], "no cubin"
        print("compiled", ragged, has_mask, has_w1, act, dtype, d_in, width, n_models)
""")


def test_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 5
