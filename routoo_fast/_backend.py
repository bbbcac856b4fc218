"""The one place that picks the pool+score backend.

  triton : the fused Triton kernel (routoo_fast.kernels.pool_score); CUDA tensors, or CPU tensors when
           TRITON_INTERPRET=1 (the interpreter: correctness tests only, never fast)
  cpu    : the torch fast path (one batched masked reduction + two addmm); runs on any device
  torch  : the plain eager reference (routoo_fast._reference.pool_score_reference)

Order of precedence: an explicit `backend` argument, then the ROUTOO_BACKEND environment variable, then automatic
(CUDA tensor -> triton, anything else -> cpu).
"""
from __future__ import annotations

import os

BACKENDS = ("triton", "cpu", "torch")
ENV_VAR = "ROUTOO_BACKEND"


def check_backend(backend: str | None, source: str = "backend") -> str | None:
    """Return `backend` if it is None or a known name; ValueError naming `source` otherwise."""
    if backend is None:
        return None
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} (or unset for automatic), got {backend!r}")
    return backend.strip().lower()


def requested_backend(backend: str | None = None) -> str | None:
    """The backend asked for by the argument or, failing that, by ROUTOO_BACKEND; None means automatic."""
    if backend is not None:
        return check_backend(backend)
    env = os.environ.get(ENV_VAR)
    if env is None or env.strip() == "":
        return None
    return check_backend(env, source=f"environment variable {ENV_VAR}")


def choose_backend(device, backend: str | None = None) -> str:
    """Backend for tensors on `device` (a torch.device or string). Raises if the choice cannot run there."""
    choice = requested_backend(backend)
    is_cuda = str(device).startswith("cuda")
    if choice is None:
        choice = "triton" if is_cuda else "cpu"
    if choice == "triton":
        if not is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend 'triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 to run the "
                "kernel in the (slow) interpreter, or use backend 'cpu'"
            )
        try:
            import triton  # noqa: F401
        except ImportError as err:
            raise ImportError("backend 'triton' needs the triton package: pip install triton") from err
    return choice
