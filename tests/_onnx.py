"""The shipped MiniLM exported to ONNX once per test process, into a temporary cache (export + fusion +
quantization take about 10 s on this machine). Tests that use it skip without onnxruntime."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import pytest


@functools.lru_cache(maxsize=None)
def _cache_dir() -> str:
    path = tempfile.mkdtemp(prefix="routoo-onnx-test-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # about 150 MB of graphs: gone when the run ends
    return path


def onnx_cache_dir() -> str:
    """A process-wide cache folder holding the exported graphs (exported on first use)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import ensure_onnx

    ensure_onnx(default_model_path(), quantized=True, cache_dir=_cache_dir())
    return _cache_dir()


@functools.lru_cache(maxsize=None)
def onnx_encoder(quantized: bool, max_length: int = 32, batch_size: int = 2):
    from routoo_fast.onnx_encoder import OnnxEncoder

    return OnnxEncoder(max_length=max_length, batch_size=batch_size, num_threads=1, quantized=quantized,
                       cache_dir=onnx_cache_dir())
