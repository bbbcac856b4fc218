"""A LiteLLM routing plugin: routoo picks the model among a LiteLLM model group's deployments.

LiteLLM (checked against litellm 1.110) runs `Router(plugins=[...])` / the proxy's `router_settings.plugins` before
it picks a deployment: each plugin is an object with an async `run(context) -> context`, where `context` is a
`litellm.types.router.RoutingContext` with `candidate_models` (the group's deployments' `litellm_params.model`,
e.g. "openai/gpt-4o-2024-05-13"), `structured_messages` (the request in OpenAI chat format), `metadata` (the
request's metadata) and `signals`; LiteLLM then only picks a deployment whose model survives. LiteLLM runs the
pipeline on its async path only (`acompletion`, and every proxy request); its sync `completion` refuses a router
with plugins.

`RoutooPlugin.run` routes the last user message with routoo among the candidates it can map to router models,
keeps only the chosen one's deployments, and records the decision in `context.signals["routoo"]` (LiteLLM copies
the signals to the request's metadata as `routing_plugin_signals`). Candidates it cannot map stay out of the
choice; with none it can map, or no user text, it leaves the candidates as they are and says why in the signals.

Names: `model_map` maps a LiteLLM model (`litellm_params.model`) to a router model; a model not in the map is
tried as its last path segment ("together_ai/meta-llama/Meta-Llama-3-70B-Instruct" -> "Meta-Llama-3-70B-Instruct").
Policy: the request's metadata `routoo_policy` (text or object, as in `routoo_fast.policies`), else the plugin's
`policy`. A bad policy in a request raises ValueError naming it (LiteLLM fails that request).

Proxy config (`config.yaml`; `routoo_plugin.py` beside it holds `plugin = RoutooPlugin(...)`, which LiteLLM loads by
its dotted path):

    model_list:
      - model_name: smart
        litellm_params: {model: openai/gpt-4o-2024-05-13, api_key: os.environ/OPENAI_API_KEY}
      - model_name: smart
        litellm_params: {model: together_ai/meta-llama/Meta-Llama-3-70B-Instruct, api_key: os.environ/TOGETHER_KEY}
    router_settings:
      plugins: ["routoo_plugin.plugin"]

LiteLLM itself is not needed to import this module (the plugin is duck-typed); `pip install routoo_fast[litellm]`
installs it.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any, Mapping

from ..policies import parse_policy

__all__ = ["RoutooPlugin", "POLICY_METADATA_KEY"]

POLICY_METADATA_KEY = "routoo_policy"


class RoutooPlugin:
    """LiteLLM routing plugin (`Router(plugins=[RoutooPlugin(...)])`).

    router: a `routoo_fast.Router`, or a saved router's path ("default": the shipped one), loaded on first use
    with `router_kwargs` (e.g. `encoder_backend="onnx-int8"`, `q_cache_bytes=...`) so that importing a proxy config
    stays cheap. model_map: {LiteLLM model: router model}. policy: the default policy (text, mapping or object).
    """

    def __init__(self, router: Any = "default", model_map: Mapping[str, str] | None = None,
                 policy: Any = "max_quality", **router_kwargs):
        is_path = isinstance(router, (str, os.PathLike))
        if not is_path and not hasattr(router, "aroute"):
            raise TypeError(f"router must be a routoo_fast.Router or a saved router's path, got "
                            f"{type(router).__name__}")
        self._router = None if is_path else router
        self._path = router if is_path else None
        self._router_kwargs = router_kwargs
        self._load_lock = asyncio.Lock()
        self.model_map = dict(model_map or {})
        for key, value in self.model_map.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or not value:
                raise ValueError(f"model_map must map LiteLLM model names to router model names, got {key!r}: "
                                 f"{value!r}")
        self.policy = parse_policy(policy)
        if self._router is not None:
            self._check_map(self._router)

    def _check_map(self, router) -> None:
        unknown = sorted({v for v in self.model_map.values() if v not in router.model_names})
        if unknown:
            raise ValueError(f"model_map names models the router does not know: {unknown} (it knows "
                             f"{list(router.model_names)})")

    @property
    def loaded(self) -> bool:
        """Whether the routoo Router is in memory (a path is loaded on the first request)."""
        return self._router is not None

    async def router(self):
        """The routoo Router, loaded (off the event loop) on first use."""
        if self._router is None:
            async with self._load_lock:
                if self._router is None:
                    from ..router import Router

                    loop = asyncio.get_running_loop()
                    router = await loop.run_in_executor(
                        None, lambda: Router.from_pretrained(self._path, **self._router_kwargs))
                    self._check_map(router)
                    self._router = router
        return self._router

    def router_model(self, litellm_model: str, known) -> str | None:
        """The router model a LiteLLM model stands for, or None."""
        name = self.model_map.get(litellm_model)
        if name is None:
            name = litellm_model.rsplit("/", 1)[-1]
        return name if name in known else None

    async def run(self, context):
        router = await self.router()
        known = set(router.model_names)
        mapped = {c: self.router_model(c, known) for c in context.candidate_models}
        names = sorted({m for m in mapped.values() if m is not None}, key=router.model_names.index)
        text = _last_user_text(context.structured_messages)
        if not names or text is None:
            context.signals["routoo"] = {"skipped": "no candidate maps to a router model" if not names
                                         else "no user text to route on"}
            return context
        policy = self._policy(context.metadata)
        allowed = names if policy.models is None else [m for m in names if m in policy.models]
        if not allowed:
            raise ValueError(f"{POLICY_METADATA_KEY} allows models {list(policy.models)}, none of which is among "
                             f"this model group's candidates {names}")
        decision = (await router.aroute([text], replace(policy, models=tuple(allowed))))[0]
        context.candidate_models = [c for c in context.candidate_models if mapped[c] == decision.model]
        context.signals["routoo"] = decision.to_dict()
        return context

    def _policy(self, metadata):
        spec = metadata.get(POLICY_METADATA_KEY) if isinstance(metadata, Mapping) else None
        if spec is None:
            return self.policy
        try:
            return parse_policy(spec)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"invalid {POLICY_METADATA_KEY} in the request metadata: {exc}") from None


def _last_user_text(messages) -> str | None:
    for message in reversed(messages or []):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            texts = [t for t in texts if isinstance(t, str)]
            return "\n".join(texts) if texts else None
        return None
    return None
