"""Pooled prompt encodings cached on disk, so every prompt goes through the encoder once per encoder.

Layout: `<cache_dir>/<sha256(encoder_id)[:16]>/` holds `encoder_id.txt` (for humans) and shards
`shard-<sha256 of the shard's keys>.npz`, each with `keys` [M] (sha256 hex of the UTF-8 text, 'S64'),
`emb` [M, D] float32 and `encoder_id`. Every shard is written atomically (temporary file + rename), so a crash
leaves earlier shards intact and never a partial one. Shards are merged into one once there are many.

cache_dir: the argument, else $ROUTOO_CACHE_DIR, else ~/.cache/routoo_fast.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from routoo_fast._atomic import atomic_write_bytes

SHIPPED_ENCODINGS = Path(__file__).resolve().parent.parent / "assets" / "encodings" / "mmlu_pro_ori_minilm.npz"
CHUNK = 512  # prompts per encoder call and per written shard: a crash loses at most one chunk of work
MAX_SHARDS = 32  # merge shards beyond this many


def default_cache_dir() -> Path:
    return Path(os.environ.get("ROUTOO_CACHE_DIR") or Path.home() / ".cache" / "routoo_fast")


def text_key(text: str) -> bytes:
    """sha256 hex digest of the UTF-8 text, as the 64-byte key stored in shards."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def _encoder_dir(encoder_id: str, cache_dir) -> Path:
    if not isinstance(encoder_id, str) or not encoder_id:
        raise ValueError(f"encoder_id must be a non-empty string, got {encoder_id!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / hashlib.sha256(encoder_id.encode("utf-8")).hexdigest()[:16]


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, got one string")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    return prompts


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.npz")) if folder.is_dir() else []


def load_cache(encoder_id: str, cache_dir=None) -> dict[bytes, np.ndarray]:
    """All cached encodings of one encoder: {text key: float32 [D]}."""
    table: dict[bytes, np.ndarray] = {}
    for shard in _shards(_encoder_dir(encoder_id, cache_dir)):
        with np.load(shard, allow_pickle=False) as z:
            if str(z["encoder_id"]) != encoder_id:
                raise ValueError(f"cache shard {shard} belongs to encoder {str(z['encoder_id'])!r}, "
                                 f"not {encoder_id!r} (hash collision or a copied file)")
            keys, emb = z["keys"], z["emb"]
        if emb.ndim != 2 or emb.shape[0] != keys.shape[0]:
            raise ValueError(f"cache shard {shard} is malformed: keys {keys.shape}, emb {emb.shape}")
        table.update(zip(keys.tolist(), emb))
    return table


def _write_shard(folder: Path, encoder_id: str, keys: Sequence[bytes], emb: np.ndarray) -> Path:
    keys_arr = np.array(list(keys), dtype="S64")
    name = hashlib.sha256(keys_arr.tobytes()).hexdigest()[:24]
    buf = io.BytesIO()
    np.savez(buf, keys=keys_arr, emb=np.ascontiguousarray(emb, dtype=np.float32), encoder_id=np.array(encoder_id))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "encoder_id.txt").exists():
        atomic_write_bytes(folder / "encoder_id.txt", encoder_id.encode("utf-8") + b"\n")
    path = folder / f"shard-{name}.npz"
    atomic_write_bytes(path, buf.getvalue())
    return path


def _compact(folder: Path, encoder_id: str, cache_dir) -> None:
    """Merge all shards into one; the merged shard is in place before the old ones are removed."""
    old = _shards(folder)
    table = load_cache(encoder_id, cache_dir)
    keys = sorted(table)
    merged = _write_shard(folder, encoder_id, keys, np.stack([table[k] for k in keys]))
    for shard in old:
        if shard != merged:
            shard.unlink(missing_ok=True)


def add_to_cache(encoder_id: str, texts: Sequence[str], embeddings, cache_dir=None) -> int:
    """Store precomputed pooled encodings `embeddings` [M, D] of `texts` under `encoder_id`; returns M stored.

    Use it to seed the cache with a shipped encoding file, made with the same encoder (same `encoder_id`).
    """
    texts = _check_prompts(texts)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"embeddings must be [M, D] with M = {len(texts)} texts, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings have NaN or infinite values")
    if not texts:
        return 0
    folder = _encoder_dir(encoder_id, cache_dir)
    _write_shard(folder, encoder_id, [text_key(t) for t in texts], emb)
    if len(_shards(folder)) > MAX_SHARDS:
        _compact(folder, encoder_id, cache_dir)
    return len(texts)


def import_encodings(path, encoder_id: str, cache_dir=None, texts_key: str = "texts", emb_key: str = "emb") -> int:
    """Load an .npz file holding `texts` [M] and `emb` [M, D] into the cache of `encoder_id`; returns M."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoding file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        for key in (texts_key, emb_key):
            if key not in z.files:
                raise ValueError(f"encoding file {path} has no array {key!r} (has {z.files})")
        texts, emb = [str(t) for t in z[texts_key]], z[emb_key]
    return add_to_cache(encoder_id, texts, emb, cache_dir)


def encode_cached(encoder, prompts: Iterable[str], cache_dir=None, progress: bool = True) -> np.ndarray:
    """Pooled encodings float32 [P, D] of `prompts`, encoding only texts missing from the cache.

    `encoder` needs `.encoder_id` (the cache key) and `.encode(list[str]) -> [B, D]`. New encodings are written
    in shards of CHUNK prompts as they are made, so an interrupted run keeps what it finished.
    """
    prompts = _check_prompts(prompts)
    encoder_id = encoder.encoder_id
    folder = _encoder_dir(encoder_id, cache_dir)
    keys = [text_key(p) for p in prompts]
    table = load_cache(encoder_id, cache_dir)
    missing: dict[bytes, str] = {}
    for k, p in zip(keys, prompts):
        if k not in table and k not in missing:
            missing[k] = p
    if missing:
        from tqdm.auto import tqdm

        todo = list(missing.items())
        with tqdm(total=len(todo), desc="encoding prompts", unit="prompt", disable=not progress) as bar:
            for s in range(0, len(todo), CHUNK):
                chunk = todo[s:s + CHUNK]
                emb = np.asarray(encoder.encode([p for _, p in chunk]), dtype=np.float32)
                if emb.ndim != 2 or emb.shape[0] != len(chunk):
                    raise ValueError(f"encoder.encode returned shape {emb.shape} for {len(chunk)} prompts")
                if not np.isfinite(emb).all():
                    raise ValueError("encoder.encode returned NaN or infinite values")
                _write_shard(folder, encoder_id, [k for k, _ in chunk], emb)
                table.update(zip((k for k, _ in chunk), emb))
                bar.update(len(chunk))
        if len(_shards(folder)) > MAX_SHARDS:
            _compact(folder, encoder_id, cache_dir)
    if not prompts:
        return np.zeros((0, int(getattr(encoder, "hidden_size", 0))), dtype=np.float32)
    dims = {table[k].shape[0] for k in set(keys)}
    if len(dims) != 1:
        raise ValueError(f"cache for encoder {encoder_id!r} mixes encoding sizes {sorted(dims)}; clear {folder}")
    return np.stack([table[k] for k in keys]).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ shipped encodings
def prompts_digest(prompts: Sequence[str]) -> str:
    """sha256 over the prompts' own sha256 digests, in order: names exactly which texts an encoding file holds."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(hashlib.sha256(p.encode("utf-8")).digest())
    return h.hexdigest()


def save_shipped_encodings(path, prompts: Sequence[str], emb, encoder_id: str) -> Path:
    """Write float16 encodings [P, D] of `prompts` (in that order) with their digest and encoder id, atomically."""
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise ValueError(f"emb must be [P={len(prompts)}, D], got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("emb has NaN or infinite values")
    buf = io.BytesIO()
    np.savez_compressed(buf, emb=emb.astype(np.float16), digest=np.array(prompts_digest(prompts)),
                        encoder_id=np.array(encoder_id))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_shipped_encodings(prompts: Sequence[str], encoder_id: str, path=SHIPPED_ENCODINGS) -> np.ndarray | None:
    """float32 [P, D] encodings of exactly these prompts by this encoder from `path`, or None if it holds others."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["encoder_id"]) != encoder_id or str(z["digest"]) != prompts_digest(prompts):
            return None
        return z["emb"].astype(np.float32)


def features(prompts: Sequence[str], encoder, cache_dir=None, progress: bool = False) -> np.ndarray:
    """Pooled encodings [P, D]: the shipped file when it holds exactly these prompts (the bundled data with the
    shipped encoder), else the encoding cache (`encode_cached`)."""
    shipped = load_shipped_encodings(prompts, encoder.encoder_id)
    if shipped is not None:
        return shipped
    from routoo_fast.data.encoding_cache import encode_cached

    return encode_cached(encoder, prompts, cache_dir=cache_dir, progress=progress)
