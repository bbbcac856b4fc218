"""Upstream LLM endpoints the server forwards chat completions to, one per router model name.

Config file (JSON):

    {
      "defaults": {"base_url": "https://openrouter.ai/api/v1", "api_key_env": "OPENROUTER_API_KEY"},
      "models": {
        "gpt-4o-2024-05-13": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
        "Meta-Llama-3-70B-Instruct": {"model": "meta-llama/llama-3-70b-instruct"},
        "Mistral-7B-Instruct-v0.2": {"base_url": "http://127.0.0.1:8001/v1", "api_key_env": null}
      }
    }

Each entry under `models` is keyed by the router's model name and may set `base_url` (an OpenAI-compatible API
root; requests go to `base_url + "/chat/completions"`), `model` (the id sent upstream, default: the key),
`api_key_env` (the environment variable holding the key; null = no key) and `timeout_s` (this upstream's read
timeout: the longest wait for its next bytes, default: the server's `--upstream-read-timeout`); missing fields
come from `defaults`. Keys are read from the environment when a request is forwarded and are never stored in the
config object, printed or logged.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["Upstream", "Upstreams", "MissingAPIKey"]

_FIELDS = {"base_url", "model", "api_key_env", "timeout_s"}


class MissingAPIKey(RuntimeError):
    """The environment variable an upstream names for its key is not set."""


@dataclass(frozen=True)
class Upstream:
    """One OpenAI-compatible endpoint serving one router model (holds the env var's name, never the key)."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float | None = None  # read timeout; None: the server's default

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        """Request headers for this upstream, with the key read from the environment now."""
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise MissingAPIKey(f"upstream for model {self.name!r} needs environment variable {self.api_key_env}, "
                                "which is not set")
        return {"Authorization": f"Bearer {key}"}


class Upstreams(Mapping[str, Upstream]):
    """Router model name -> Upstream, validated. Build with `Upstreams.load(path)` or `Upstreams.from_dict(d)`."""

    def __init__(self, entries: Mapping[str, Upstream]):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Upstream:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Upstreams({sorted(self._entries)})"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Upstreams":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"upstreams config {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"upstreams config {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "upstreams config") -> "Upstreams":
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a JSON object with a 'models' object")
        unknown = set(data) - {"defaults", "models"}
        if unknown:
            raise ValueError(f"{source} has unknown top-level keys {sorted(unknown)} (expected 'defaults', 'models')")
        defaults = data.get("defaults", {})
        models = data.get("models")
        if not isinstance(defaults, Mapping):
            raise ValueError(f"{source}: 'defaults' must be an object")
        _check_fields(defaults, f"{source}: defaults")
        if not isinstance(models, Mapping) or not models:
            raise ValueError(f"{source} needs a non-empty 'models' object mapping model names to endpoints")
        entries = {}
        for name, entry in models.items():
            where = f"{source}: models[{name!r}]"
            if entry is None:
                entry = {}
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where} must be an object")
            _check_fields(entry, where)
            merged = {**defaults, **entry}
            base_url = merged.get("base_url")
            if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
                raise ValueError(f"{where}: base_url must be an http(s) URL, got {base_url!r}")
            model = merged.get("model", name)
            if not isinstance(model, str) or not model:
                raise ValueError(f"{where}: model must be a non-empty string, got {model!r}")
            key_env = merged.get("api_key_env")
            if key_env is not None and (not isinstance(key_env, str) or not key_env):
                raise ValueError(f"{where}: api_key_env must be an environment variable name or null, got {key_env!r}")
            timeout = merged.get("timeout_s")
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                        or not (0 < timeout < math.inf)):
                raise ValueError(f"{where}: timeout_s must be a positive number of seconds, got {timeout!r}")
            entries[name] = Upstream(name, base_url, model, key_env, None if timeout is None else float(timeout))
        return cls(entries)

    def missing_keys(self) -> dict[str, str]:
        """Model name -> env var name, for upstreams whose key variable is not set (for a startup warning)."""
        return {n: u.api_key_env for n, u in self._entries.items()
                if u.api_key_env and not os.environ.get(u.api_key_env)}


def _check_fields(entry: Mapping, where: str) -> None:
    if "api_key" in entry:  # a literal key in a config file is how keys leak: refuse it, without echoing it
        raise ValueError(f"{where}: do not put keys in the config; set an environment variable and name it in "
                         "api_key_env")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)} (allowed: {sorted(_FIELDS)})")
