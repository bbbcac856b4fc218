import numpy as np
import pytest

from routoo_fast.data import encoding_cache
from routoo_fast.data.encoding_cache import add_to_cache, encode_cached, import_encodings, load_cache


class CountingEncoder:
    """A deterministic stand-in encoder (hash of the text -> vector) that records what it was asked to encode.

    The cache only needs `.encoder_id` and `.encode`; the real Encoder is exercised in the slow test below.
    """

    def __init__(self, encoder_id="fake-encoder/v1", dim=6):
        self.encoder_id = encoder_id
        self.hidden_size = dim
        self.calls: list[list[str]] = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        rows = [np.random.default_rng(abs(hash(p)) % 2**32).normal(size=self.hidden_size) for p in prompts]
        return np.array(rows, dtype=np.float32).reshape(len(prompts), self.hidden_size)


def test_encodes_each_text_once_and_returns_rows_in_order(tmp_path):
    enc = CountingEncoder()
    first = encode_cached(enc, ["a", "b", "a"], cache_dir=tmp_path, progress=False)
    assert enc.calls == [["a", "b"]]  # the repeated "a" is encoded once
    np.testing.assert_array_equal(first[0], first[2])
    again = encode_cached(enc, ["b", "c", "a"], cache_dir=tmp_path, progress=False)
    assert enc.calls[1] == ["c"]  # only the missing text
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])
    assert again.dtype == np.float32 and again.shape == (3, 6)
    # nothing left to encode -> no encoder call at all
    encode_cached(enc, ["a", "b", "c"], cache_dir=tmp_path, progress=False)
    assert len(enc.calls) == 2


def test_keyed_by_encoder_id(tmp_path):
    a, b = CountingEncoder("enc-a"), CountingEncoder("enc-b", dim=3)
    encode_cached(a, ["x"], cache_dir=tmp_path, progress=False)
    out = encode_cached(b, ["x"], cache_dir=tmp_path, progress=False)
    assert b.calls == [["x"]] and out.shape == (1, 3)


def test_env_var_sets_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTOO_CACHE_DIR", str(tmp_path / "env-cache"))
    encode_cached(CountingEncoder(), ["hello"], progress=False)
    assert list((tmp_path / "env-cache").glob("*/shard-*.npz"))


def test_crash_mid_encoding_keeps_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(encoding_cache, "CHUNK", 2)
    enc = CountingEncoder()
    real = enc.encode

    def fail_on_third_call(prompts):
        if len(enc.calls) == 2:
            raise RuntimeError("killed")
        return real(prompts)

    enc.encode = fail_on_third_call
    with pytest.raises(RuntimeError, match="killed"):
        encode_cached(enc, list("abcdef"), cache_dir=tmp_path, progress=False)
    assert len(load_cache(enc.encoder_id, tmp_path)) == 4  # two finished chunks survived
    assert not list(tmp_path.rglob("*.tmp"))  # and no partial file


def test_many_shards_are_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(encoding_cache, "MAX_SHARDS", 3)
    enc = CountingEncoder()
    for t in "abcde":
        encode_cached(enc, [t], cache_dir=tmp_path, progress=False)
    shards = list(tmp_path.glob("*/shard-*.npz"))
    assert len(shards) <= 3
    assert sorted(load_cache(enc.encoder_id, tmp_path)) == sorted(encoding_cache.text_key(t) for t in "abcde")


def test_import_precomputed_file(tmp_path):
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "shipped.npz", texts=np.array(["p1", "p2"]), emb=emb)
    assert import_encodings(tmp_path / "shipped.npz", "enc-a", cache_dir=tmp_path / "c") == 2
    enc = CountingEncoder("enc-a", dim=3)
    out = encode_cached(enc, ["p2", "p1"], cache_dir=tmp_path / "c", progress=False)
    assert enc.calls == []
    np.testing.assert_array_equal(out, emb[::-1])


def test_bad_input(tmp_path):
    enc = CountingEncoder()
    with pytest.raises(TypeError, match="one string"):
        encode_cached(enc, "abc", cache_dir=tmp_path)
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        encode_cached(enc, ["a", 3], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        add_to_cache("e", ["a"], [[np.nan]], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="M = 2"):
        add_to_cache("e", ["a", "b"], [[1.0]], cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        import_encodings(tmp_path / "nope.npz", "e", cache_dir=tmp_path)

    class Broken(CountingEncoder):
        def encode(self, prompts):
            return np.zeros((len(prompts) + 1, 2), np.float32)

    with pytest.raises(ValueError, match="returned shape"):
        encode_cached(Broken(), ["a"], cache_dir=tmp_path, progress=False)
