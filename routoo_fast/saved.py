"""A saved router: one directory with `config.json` and `head.safetensors`, written atomically, loaded validated.

config.json (format_version 1):
  format_version          1
  encoder                 Encoder.spec(): what `Encoder.from_spec` rebuilds (path, pooling, max_length, ...)
  model_names             [N] names, in the order of the head's rows
  prices                  {model: {input_usd_per_mtok, output_usd_per_mtok, open_weights, source}}
  head                    {d_in: D, n_models: N, hidden: H or null, act}
  expected_output_tokens  {model: tokens}
  metadata                free-form JSON (training data, config, held-out report, ...)
  encoder_backend         optional: the encoder backend a Router loads by default ("torch", "onnx", "onnx-int8";
                          absent = "torch", as routers saved before the field existed)
  output_length           optional: {file: "output_length.safetensors", alpha, val_rmse_log}, the cost model's
                          per-prompt output-length model (absent = each model's expected_output_tokens)
head.safetensors: tensors W1 [H, D], b1 [H] (absent when hidden is null), E [N, H], b [N], float32.
output_length.safetensors: weight [D, N], bias [N], scale [N], float64 (`output_length.OutputLengthModel`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
LENGTH_FILE = "output_length.safetensors"
CONFIG_KEYS = ("format_version", "encoder", "model_names", "prices", "head", "expected_output_tokens")


@dataclass
class SavedRouter:
    """What `load_router` returns: everything needed to rebuild a Router."""

    config: dict
    head: object  # ScoringHead
    model_names: list[str]
    prices: object  # PriceTable
    expected_output_tokens: np.ndarray  # float64 [N]
    metadata: dict = field(default_factory=dict)
    output_length: object = None  # OutputLengthModel or None

    @property
    def encoder_backend(self) -> str:
        """The encoder backend recorded in config.json ("torch" when the router predates the field)."""
        return self.config.get("encoder_backend") or "torch"

    @property
    def cost_model(self):
        """The router's `costs.CostModel`: its prices and expected output tokens (equal cost if trained so)."""
        from routoo_fast.costs import CostModel

        info = self.metadata.get("cost_model") if isinstance(self.metadata, dict) else None
        info = info if isinstance(info, dict) else {}
        return CostModel(self.model_names, self.prices, self.expected_output_tokens,
                         equal_cost=bool(info.get("equal_cost", False)),
                         output_tokens_source=info.get("output_tokens_source") or {},
                         output_length=self.output_length)


def _price_table(prices, model_names):
    from routoo_fast.costs import PriceTable

    if isinstance(prices, PriceTable):
        table = prices
    elif isinstance(prices, Mapping):
        table = PriceTable.from_dict(prices)
    else:
        raise TypeError(f"prices must be a PriceTable or a mapping model -> price fields, got {type(prices).__name__}")
    missing = [m for m in model_names if m not in table]
    if missing:
        raise ValueError(f"prices has no entry for models {missing}")
    return table


def _output_tokens(expected_output_tokens, model_names) -> np.ndarray:
    from .costs import per_model_tokens

    return per_model_tokens(expected_output_tokens, model_names)


def _check_names(model_names) -> list[str]:
    if isinstance(model_names, str):
        raise TypeError("model_names must be a list of str, got one str")
    names = list(model_names)
    if not all(isinstance(m, str) and m for m in names):
        raise TypeError("model_names must be non-empty strings")
    if len(set(names)) != len(names):
        dup = sorted({m for m in names if names.count(m) > 1})
        raise ValueError(f"model_names has duplicates: {dup}")
    return names


def _head_tensors(head) -> dict:
    tensors = {k: getattr(head, k) for k in ("W1", "b1", "E", "b") if getattr(head, k) is not None}
    return {k: v.detach().to("cpu").float().contiguous().clone() for k, v in tensors.items()}


def save_router(path, head, model_names, encoder_spec: dict, prices, expected_output_tokens=None,
                metadata: dict | None = None, encoder_backend: str = "torch") -> Path:
    """Write a router directory at `path` (replacing any old one only once the new one is complete).

    encoder_backend: the encoder backend `Router.from_pretrained` uses unless told otherwise (ENCODER_BACKENDS).

    prices: a `costs.CostModel` (then expected_output_tokens is taken from it and its `describe()` goes to
    metadata["cost_model"]), or a PriceTable / price mapping together with expected_output_tokens."""
    import torch
    from safetensors.torch import save_file

    from routoo_fast.costs import CostModel

    length = None
    if isinstance(prices, CostModel):
        if expected_output_tokens is not None:
            raise TypeError("with a CostModel, expected_output_tokens comes from it: pass None")
        if list(prices.models) != list(model_names):
            raise ValueError(f"the cost model prices {list(prices.models)}, model_names are {list(model_names)}")
        metadata = {**(metadata or {}), "cost_model": prices.describe()}
        length = prices.output_length
        if length is not None and length.d_in != head.d_in:
            raise ValueError(f"the output-length model reads D = {length.d_in}, the head D = {head.d_in}")
        prices, expected_output_tokens = prices.prices, prices.expected_output_tokens
    elif expected_output_tokens is None:
        raise TypeError("expected_output_tokens is required with a PriceTable (or pass a CostModel as prices)")
    from routoo_fast.onnx_encoder import check_encoder_backend

    check_encoder_backend(encoder_backend)
    names = _check_names(model_names)
    if head.n_models != len(names):
        raise ValueError(f"head scores {head.n_models} models but model_names has {len(names)}")
    if not isinstance(encoder_spec, Mapping):
        raise TypeError(f"encoder_spec must be a dict (Encoder.spec()), got {type(encoder_spec).__name__}")
    table = _price_table(prices, names)
    eo = _output_tokens(expected_output_tokens, names)
    tensors = _head_tensors(head)
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"head weight {k} has NaN or infinite values; refusing to save")
    config = {
        "format_version": FORMAT_VERSION,
        "encoder": dict(encoder_spec),
        "model_names": names,
        "prices": table.to_dict(names),
        "head": {"d_in": head.d_in, "n_models": head.n_models, "hidden": head.hidden, "act": head.act},
        "expected_output_tokens": {m: float(v) for m, v in zip(names, eo)},
        "metadata": dict(metadata or {}),
        "encoder_backend": encoder_backend,
    }
    if length is not None:
        info = length.describe()
        config["output_length"] = {"file": LENGTH_FILE, "alpha": info["alpha"], "val_rmse_log": info["val_rmse_log"]}
    text = json.dumps(config, indent=2, allow_nan=False)  # fails here, before anything is written, if not JSON
    from routoo_fast._atomic import atomic_directory

    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / HEAD_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        if length is not None:
            from safetensors.numpy import save_file as save_numpy

            save_numpy({k: np.ascontiguousarray(v) for k, v in length.tensors().items()}, str(tmp / LENGTH_FILE),
                       metadata={"format_version": str(FORMAT_VERSION)})
    return Path(path)


def _expect(cond: bool, where: Path, message: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {message}")


def load_router(path) -> SavedRouter:
    """Read and validate a router directory; any problem raises an error naming the file and what is wrong."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from routoo_fast.head import ACTIVATIONS, ScoringHead

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"router directory not found: {path}")
    cpath, hpath = path / CONFIG_FILE, path / HEAD_FILE
    for f in (cpath, hpath):
        if not f.is_file():
            raise FileNotFoundError(f"router file missing: {f}")
    try:
        config = json.loads(cpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cpath}: not valid JSON ({e})") from None
    _expect(isinstance(config, dict), cpath, "must hold a JSON object")
    version = config.get("format_version")
    _expect(version == FORMAT_VERSION, cpath,
            f"unknown format_version {version!r} (this version of routoo_fast reads {FORMAT_VERSION})")
    missing = [k for k in CONFIG_KEYS if k not in config]
    _expect(not missing, cpath, f"missing keys {missing}")
    try:
        names = _check_names(config["model_names"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cpath}: model_names: {e}") from None
    _expect(len(names) > 0, cpath, "model_names is empty")
    _expect(isinstance(config["encoder"], dict), cpath, "encoder must be an object (an Encoder spec)")
    from routoo_fast.onnx_encoder import ENCODER_BACKENDS

    backend = config.get("encoder_backend", "torch")
    _expect(backend in ENCODER_BACKENDS, cpath,
            f"encoder_backend must be one of {list(ENCODER_BACKENDS)}, got {backend!r}")
    hc = config["head"]
    _expect(isinstance(hc, dict) and {"d_in", "n_models", "hidden", "act"} <= set(hc), cpath,
            "head must be an object with d_in, n_models, hidden, act")
    _expect(hc["act"] in ACTIVATIONS, cpath, f"head.act must be one of {ACTIVATIONS}, got {hc['act']!r}")
    for k in ("d_in", "n_models"):
        _expect(isinstance(hc[k], int) and not isinstance(hc[k], bool) and hc[k] > 0, cpath,
                f"head.{k} must be a positive int, got {hc[k]!r}")
    _expect(hc["hidden"] is None or (isinstance(hc["hidden"], int) and hc["hidden"] > 0), cpath,
            f"head.hidden must be a positive int or null, got {hc['hidden']!r}")
    _expect(hc["n_models"] == len(names), cpath,
            f"head.n_models is {hc['n_models']} but model_names has {len(names)} names")
    try:
        prices = _price_table(config["prices"], names)
        eo = _output_tokens(config["expected_output_tokens"], names)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cpath}: {e}") from None

    try:
        tensors = load_file(str(hpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{hpath}: unreadable safetensors file ({e})") from None
    D, N, H = hc["d_in"], hc["n_models"], hc["hidden"]
    want = {"E": (N, D if H is None else H), "b": (N,)}
    if H is not None:
        want.update({"W1": (H, D), "b1": (H,)})
    _expect(set(tensors) == set(want), hpath, f"tensors {sorted(tensors)} but config.json's head needs {sorted(want)}")
    for k, shape in want.items():
        t = tensors[k]
        _expect(tuple(t.shape) == shape, hpath,
                f"tensor {k} has shape {list(t.shape)} but config.json's head needs {list(shape)}")
        _expect(t.is_floating_point(), hpath, f"tensor {k} has dtype {t.dtype}, expected a float type")
        _expect(bool(torch.isfinite(t).all()), hpath, f"tensor {k} has NaN or infinite values")
    head = ScoringHead(D, N, hidden=H, act=hc["act"])
    head.load_state_dict({k: t.float() for k, t in tensors.items()})
    head.eval()
    metadata = config.get("metadata") or {}
    return SavedRouter(config=config, head=head, model_names=names, prices=prices, expected_output_tokens=eo,
                       metadata=metadata, output_length=_load_length(path, config, D, N))


def _load_length(path: Path, config: dict, D: int, N: int):
    """The saved OutputLengthModel, or None when config.json records none."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from routoo_fast.output_length import OutputLengthModel

    info = config.get("output_length")
    if info is None:
        return None
    cpath = path / CONFIG_FILE
    _expect(isinstance(info, dict) and info.get("file") == LENGTH_FILE, cpath,
            f"output_length must be an object with file {LENGTH_FILE!r}")
    lpath = path / LENGTH_FILE
    if not lpath.is_file():
        raise FileNotFoundError(f"router file missing: {lpath}")
    try:
        t = load_file(str(lpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{lpath}: unreadable safetensors file ({e})") from None
    want = {"weight": (D, N), "bias": (N,), "scale": (N,)}
    _expect(set(t) == set(want), lpath, f"tensors {sorted(t)}, expected {sorted(want)}")
    for k, shape in want.items():
        _expect(t[k].shape == shape, lpath, f"tensor {k} has shape {list(t[k].shape)}, expected {list(shape)}")
    alpha = info.get("alpha")
    rmse = info.get("val_rmse_log")
    try:
        return OutputLengthModel(t["weight"], t["bias"], t["scale"],
                                 alpha=float("nan") if alpha is None else float(alpha),
                                 val_rmse_log=float("nan") if rmse is None else float(rmse))
    except ValueError as e:
        raise ValueError(f"{lpath}: {e}") from None
