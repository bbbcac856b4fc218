import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from routoo_fast import saved as saved_mod
from routoo_fast.costs import PriceTable
from routoo_fast.head import ScoringHead
from routoo_fast.saved import load_router, save_router

NAMES = ["m-a", "m-b", "m-c"]
PRICES = {"m-a": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
          "m-b": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 3.0},
          "m-c": {"input_usd_per_mtok": 5.0, "output_usd_per_mtok": 15.0}}
SPEC = {"path": None, "max_length": 256, "batch_size": 64, "pooling": "mean", "encoder_id": "fake@sha256:0/pool=mean"}


def make_head(hidden=4, seed=0):
    torch.manual_seed(seed)
    head = ScoringHead(6, 3, hidden=hidden, act="tanh" if hidden else "gelu")
    with torch.no_grad():
        head.b.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return head


def save(path, head=None, **kw):
    args = dict(head=head if head is not None else make_head(), model_names=NAMES, encoder_spec=SPEC, prices=PRICES,
                expected_output_tokens=[10, 20, 30], metadata={"note": "test"})
    args.update(kw)
    return save_router(path, **args)


@pytest.mark.parametrize("hidden", [4, None])
def test_round_trip(tmp_path, hidden):
    head = make_head(hidden)
    save(tmp_path / "r", head)
    got = load_router(tmp_path / "r")
    x = torch.randn(5, 6)
    for name, p in head.state_dict().items():  # the weights round-trip bit for bit
        assert torch.equal(got.head.state_dict()[name], p), name
    # the forward pass: same ops, but MKL/oneDNN may pick kernels by buffer alignment, so fp32 tolerances
    torch.testing.assert_close(got.head(x), head(x))
    assert got.model_names == NAMES
    assert isinstance(got.prices, PriceTable) and got.prices.get("m-b").output_usd_per_mtok == 3.0
    assert got.expected_output_tokens.tolist() == [10.0, 20.0, 30.0]
    assert got.metadata == {"note": "test"}
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["encoder"] == SPEC
    assert cfg["head"] == {"d_in": 6, "n_models": 3, "hidden": hidden, "act": head.act}
    keys = set(load_file(str(tmp_path / "r" / "head.safetensors")))
    assert keys == ({"W1", "b1", "E", "b"} if hidden else {"E", "b"})


def test_accepts_price_table_and_mapping_of_tokens(tmp_path):
    save(tmp_path / "r", prices=PriceTable.from_dict(PRICES), expected_output_tokens={"m-a": 1, "m-b": 2, "m-c": 3})
    assert load_router(tmp_path / "r").expected_output_tokens.tolist() == [1, 2, 3]


def test_crash_mid_save_keeps_the_old_router(tmp_path, monkeypatch):
    path = tmp_path / "r"
    old = make_head(seed=0)
    save(path, old)

    def crash(*args, **kwargs):
        raise RuntimeError("disk died")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(RuntimeError, match="disk died"):
        save(path, make_head(seed=1))
    x = torch.randn(2, 6)
    torch.testing.assert_close(load_router(path).head(x), old(x))  # old one still complete and loadable
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no half-written sibling left over


def test_crash_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("safetensors.torch.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        save(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="router directory not found"):
        load_router(tmp_path / "r")


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            del cfg[k]
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_files_are_named(tmp_path):
    save(tmp_path / "r")
    (tmp_path / "r" / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        load_router(tmp_path / "r")
    save(tmp_path / "s")
    (tmp_path / "s" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_router(tmp_path / "s")


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 2}, "unknown format_version 2"),
    ({"model_names": KeyError}, r"missing keys \['model_names'\]"),
    ({"model_names": ["m-a", "m-b"]}, "n_models is 3 but model_names has 2"),
    ({"model_names": ["m-a", "m-a", "m-b"]}, "duplicates"),
    ({"head": {"d_in": 6, "n_models": 3, "hidden": 5, "act": "tanh"}}, "has shape .* needs"),
    ({"head": {"d_in": 7, "n_models": 3, "hidden": 4, "act": "tanh"}}, "W1 has shape"),
    ({"head": {"d_in": 6, "n_models": 3, "hidden": 4, "act": "swish"}}, "act must be"),
    ({"head": {"d_in": 6, "n_models": 3, "hidden": None, "act": "identity"}}, "tensors"),
    ({"prices": {"m-a": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}}, "no entry for models"),
    ({"expected_output_tokens": {"m-a": 1, "m-b": 2, "m-c": -3}}, "expected_output_tokens must be"),
])
def test_bad_config_is_a_clear_value_error(tmp_path, changes, message):
    save(tmp_path / "r")
    edit_config(tmp_path / "r", **changes)
    with pytest.raises(ValueError, match=message):
        load_router(tmp_path / "r")


def test_bad_tensors(tmp_path):
    save(tmp_path / "r")
    hpath = tmp_path / "r" / "head.safetensors"
    tensors = load_file(str(hpath))
    save_file({**tensors, "E": torch.full_like(tensors["E"], float("nan"))}, str(hpath))
    with pytest.raises(ValueError, match="E has NaN"):
        load_router(tmp_path / "r")
    save_file({k: v for k, v in tensors.items() if k != "b"}, str(hpath))
    with pytest.raises(ValueError, match="tensors"):
        load_router(tmp_path / "r")
    hpath.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable"):
        load_router(tmp_path / "r")
    (tmp_path / "r" / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_router(tmp_path / "r")


def test_bad_save_arguments_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="head scores 3 models"):
        save(tmp_path / "r", model_names=["x", "y"])
    with pytest.raises(ValueError, match="prices has no entry"):
        save(tmp_path / "r", prices={"m-a": PRICES["m-a"]})
    head = make_head()
    with torch.no_grad():
        head.E[0, 0] = float("inf")
    with pytest.raises(ValueError, match="E has NaN or infinite"):
        save(tmp_path / "r", head)
    with pytest.raises(ValueError):
        save(tmp_path / "r", metadata={"x": float("nan")})
    assert list(tmp_path.iterdir()) == []
    assert saved_mod.FORMAT_VERSION == 1
