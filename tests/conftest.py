"""Test-wide setup.

TRITON_INTERPRET must be set before any `@triton.jit` function is decorated (triton decides at decoration
time), so it is set here, before a test module can import routoo_fast.kernels. On a CUDA machine the real
compiler is used unless the caller set the variable themselves.
"""
import os

import pytest
from hypothesis import settings

# CI (CI=true) draws the same examples every run, so a landing never hinges on a lucky draw; locally hypothesis keeps
# exploring new ones. No hypothesis test may depend on wall-clock time (deadline off: this is a shared 2-core machine).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture()
def serve_wiring(monkeypatch):
    """`routoo-fast serve` with the router load and uvicorn.run stubbed: {"create_app": its kwargs, "run": uvicorn's
    kwargs}, so a test checks how flags are wired into the app, not a running server."""
    import uvicorn

    import routoo_fast.serve.server
    from routoo_fast import cli
    from small_router import small_router

    calls = {}
    real_create_app = routoo_fast.serve.server.create_app

    def create_app(*args, **kwargs):
        calls["create_app"] = kwargs
        return real_create_app(*args, **kwargs)

    monkeypatch.setattr(cli, "_load_router", lambda args: small_router())
    monkeypatch.setattr(routoo_fast.serve.server, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.setdefault("run", kwargs))
    return calls
