"""The ONNX encoder backends against the torch Encoder (the reference): token ids equal, fp32 pooled encodings
within float tolerance, int8 close in cosine; export and quantization reproducible and atomic; the Router and the
saved config choose the backend; a clear error without onnxruntime."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from tests._minilm import PROMPTS, shared_encoder
from tests._onnx import onnx_cache_dir, onnx_encoder

pytest.importorskip("onnxruntime")

MORE = PROMPTS + ["Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter",
                  "naïve café — 東京 🚀", "word " * 400, "   leading and trailing   ", "x"]


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_token_ids_equal_the_torch_encoders():
    from routoo_fast.data import load_default

    prompts = MORE + load_default().prompts[:200]
    assert onnx_encoder(False).token_ids(prompts) == shared_encoder().token_ids(prompts)


def test_token_ids_respect_max_chars():
    enc = onnx_encoder(False)
    long = "a" * (enc.max_chars + 100)
    assert enc.token_ids([long]) == shared_encoder().token_ids([long])


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_fp32_pooled_matches_torch(batch):
    prompts = (MORE * 2)[:batch]
    got = onnx_encoder(False).encode(prompts)
    want = shared_encoder().encode(prompts)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_fp32_batched_equals_one_at_a_time():
    enc = onnx_encoder(False)
    batched = enc.encode(MORE)
    single = np.stack([enc.encode([p])[0] for p in MORE])
    np.testing.assert_allclose(batched, single, atol=2e-5, rtol=1e-4)


def test_int8_encoding_does_not_depend_on_the_batch():
    enc = onnx_encoder(True)
    batched = enc.encode(MORE)
    single = np.stack([enc.encode([p])[0] for p in MORE])
    np.testing.assert_array_equal(batched, single)  # each prompt runs alone: the same operations, the same order
    np.testing.assert_array_equal(enc.encode(MORE[::-1]), batched[::-1])


def test_int8_pooled_close_to_fp32():
    got = onnx_encoder(True).encode(MORE)
    want = shared_encoder().encode(MORE)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.97, cos
    assert not np.allclose(got, want, atol=1e-4)  # it is a different graph: the test would notice an fp32 one


def test_last_pooling_matches_torch():
    from routoo_fast.encoder import Encoder
    from routoo_fast.onnx_encoder import OnnxEncoder

    ref = Encoder(max_length=32, batch_size=3, num_threads=1, pooling="last", device="cpu")
    enc = OnnxEncoder(max_length=32, batch_size=3, num_threads=1, pooling="last", cache_dir=onnx_cache_dir())
    np.testing.assert_allclose(enc.encode(MORE), ref.encode(MORE), atol=2e-5, rtol=1e-4)


def test_identity_matches_torch_encoder():
    enc, ref = onnx_encoder(False), shared_encoder()
    assert enc.encoder_id == ref.encoder_id
    assert enc.spec() == {**ref.spec(), "batch_size": enc.batch_size}


def test_export_is_reproducible_and_atomic(tmp_path):
    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import ensure_onnx, onnx_paths

    fp32, int8 = onnx_paths(default_model_path(), onnx_cache_dir())
    again_fp32, again_int8 = onnx_paths(default_model_path(), tmp_path)
    assert ensure_onnx(default_model_path(), quantized=True, cache_dir=tmp_path) == again_int8
    assert _md5(again_fp32) == _md5(fp32) and _md5(again_int8) == _md5(int8)
    leftovers = [p.name for p in again_fp32.parent.iterdir() if p.name not in (fp32.name, int8.name)]
    assert leftovers == []  # temporary files renamed or removed
    # keyed by the weights' hash: another weights file is another folder
    assert fp32.parent.name.startswith(hashlib.sha256(b"").hexdigest()[:4]) is False


def test_cache_key_follows_the_weights(tmp_path):
    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import onnx_paths

    copy = tmp_path / "model"
    shutil.copytree(default_model_path(), copy)
    assert onnx_paths(copy, tmp_path)[0] == onnx_paths(default_model_path(), tmp_path)[0]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert onnx_paths(copy, tmp_path)[0] != onnx_paths(default_model_path(), tmp_path)[0]


def test_bad_arguments_are_clear_errors():
    from routoo_fast.onnx_encoder import OnnxEncoder, check_encoder_backend

    with pytest.raises(ValueError, match="encoder_backend must be one of"):
        check_encoder_backend("onnx_int8")
    with pytest.raises(ValueError, match="run on the CPU"):
        OnnxEncoder(device="cuda", cache_dir=onnx_cache_dir())
    with pytest.raises(ValueError, match="max_length"):
        OnnxEncoder(max_length=100000, cache_dir=onnx_cache_dir())
    with pytest.raises(TypeError, match="list of strings"):
        onnx_encoder(False).encode("one string")
    from routoo_fast.encoder import InvalidPrompt

    with pytest.raises(InvalidPrompt):
        onnx_encoder(False).encode(["bad \ud800 text"])


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    from routoo_fast import onnx_encoder as mod
    from routoo_fast.router import Router

    cache = onnx_cache_dir()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"routoo_fast\[onnx\]"):
        mod.OnnxEncoder(cache_dir=cache)
    with pytest.raises(ImportError, match=r"routoo_fast\[onnx\]"):
        Router.from_pretrained("default", encoder_backend="onnx-int8")
    assert Router.from_pretrained("default", max_length=32, num_threads=1).encoder_backend == "torch"


# ---- Router and saved config ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_env(tmp_path_factory):
    import os

    old = os.environ.get("ROUTOO_CACHE_DIR")
    os.environ["ROUTOO_CACHE_DIR"] = onnx_cache_dir()
    yield
    if old is None:
        os.environ.pop("ROUTOO_CACHE_DIR", None)
    else:
        os.environ["ROUTOO_CACHE_DIR"] = old


# onnx: float tolerance everywhere; onnx-int8 on these odd prompts (one letter, one word 400 times): small on average,
# bounded at worst (the decision-level gate on real held-out prompts is tests/test_onnx_parity.py)
@pytest.mark.parametrize("kind, mean_tol, max_tol", [("onnx", 2e-6, 2e-5), ("onnx-int8", 0.02, 0.1)])
def test_router_backends_predict_like_torch(onnx_env, kind, mean_tol, max_tol):
    from routoo_fast.router import Router

    torch_router = Router.from_pretrained("default", max_length=32, num_threads=1, device="cpu")
    router = Router.from_pretrained("default", max_length=32, num_threads=1, encoder_backend=kind)
    assert router.encoder_backend == kind and torch_router.encoder_backend == "torch"
    want = torch_router.predict(MORE)
    got = router.predict(MORE)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).mean() <= mean_tol and np.abs(got - want).max() <= max_tol
    np.testing.assert_allclose(router.predict(MORE[:1]), got[:1], atol=2e-5)
    assert [d.model for d in router.route(MORE[:3], "lambda=100")] == \
        [d.model for d in router.decide(MORE[:3], got[:3], "lambda=100")]


def test_saved_router_records_the_backend(onnx_env, tmp_path):
    from routoo_fast.router import DEFAULT_ROUTER, Router
    from routoo_fast.saved import load_router

    old = load_router(DEFAULT_ROUTER)
    config = dict(old.config)
    config.pop("encoder_backend", None)
    folder = tmp_path / "r"
    shutil.copytree(DEFAULT_ROUTER, folder)
    (folder / "config.json").write_text(json.dumps(config))
    assert load_router(folder).encoder_backend == "torch"  # routers saved before the field load as torch
    config["encoder_backend"] = "onnx"
    (folder / "config.json").write_text(json.dumps(config))
    assert Router.from_pretrained(folder, max_length=32, num_threads=1).encoder_backend == "onnx"
    assert Router.from_pretrained(folder, max_length=32, num_threads=1,
                                  encoder_backend="torch").encoder_backend == "torch"
    config["encoder_backend"] = "tensorrt"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="encoder_backend must be one of"):
        load_router(folder)


def test_save_router_writes_the_backend(tmp_path):
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router, save_router

    old = load_router(DEFAULT_ROUTER)
    save_router(tmp_path / "r", old.head, old.model_names, old.config["encoder"], old.cost_model,
                encoder_backend="onnx-int8")
    assert load_router(tmp_path / "r").encoder_backend == "onnx-int8"
    with pytest.raises(ValueError, match="encoder_backend"):
        save_router(tmp_path / "s", old.head, old.model_names, old.config["encoder"], old.cost_model,
                    encoder_backend="int8")


def test_triton_with_an_onnx_encoder_is_refused(onnx_env):
    from routoo_fast.router import Router

    with pytest.raises(ValueError, match="inside its graph"):
        Router.from_pretrained("default", backend="triton", encoder_backend="onnx")


def test_cli_route_takes_the_encoder_backend(onnx_env, capsys):
    from routoo_fast import cli

    outputs = {}
    for kind in ("torch", "onnx"):
        assert cli.main(["route", "What is 7 + 5?", "--max-length", "32", "--threads", "1", "--json", "--scores",
                         "--encoder-backend", kind]) == 0
        outputs[kind] = json.loads(capsys.readouterr().out)
    assert outputs["onnx"]["model"] == outputs["torch"]["model"]
    for m, v in outputs["torch"]["scores"].items():
        assert abs(outputs["onnx"]["scores"][m]["quality"] - v["quality"]) < 2e-5
    with pytest.raises(SystemExit):  # argparse refuses an unknown backend by name
        cli.main(["route", "hi", "--encoder-backend", "tensorrt"])
    assert "invalid choice" in capsys.readouterr().err
