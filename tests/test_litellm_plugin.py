"""The LiteLLM routing plugin inside a real `litellm.Router(plugins=[...])`, offline: every deployment answers with
LiteLLM's `mock_response`, so which answer comes back says which deployment routoo left LiteLLM to pick. Checks the
choice against the router's own, the policy from request metadata, the model-name map, candidates the router does
not know, a bad policy, and that the example proxy config in docs/litellm/ loads its plugin through LiteLLM's own
loader. Skipped without litellm (`pip install routoo_fast[litellm]`)."""
import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of LiteLLM's price map at import
litellm = pytest.importorskip("litellm")

from routoo_fast.serve.litellm_plugin import RoutooPlugin  # noqa: E402
from small_router import MODELS, small_router  # noqa: E402

PROMPT = "Prove that the square root of two is irrational."
CHEAP = "lambda=1000000"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "litellm"


class Recorder:
    """A plugin after routoo's: what the pipeline left (candidates and signals)."""

    def __init__(self):
        self.seen = []

    async def run(self, context):
        self.seen.append((list(context.candidate_models), dict(context.signals)))
        return context


def deployment(litellm_model: str, group: str = "smart"):
    return {"model_name": group, "litellm_params": {"model": litellm_model, "api_key": "sk-offline",
                                                    "mock_response": f"answer of {litellm_model}"}}


def make_router(plugin, extra=()):
    recorder = Recorder()
    model_list = [deployment(f"openai/{m}") for m in MODELS] + list(extra)
    return litellm.Router(model_list=model_list, plugins=[plugin, recorder]), recorder


def ask(lrouter, **kwargs):
    async def main():
        response = await lrouter.acompletion(model="smart", messages=[{"role": "system", "content": "be brief"},
                                                                      {"role": "user", "content": PROMPT}], **kwargs)
        return response.choices[0].message.content
    return asyncio.run(main())


def test_routoo_picks_the_deployment():
    router = small_router()
    lrouter, recorder = make_router(RoutooPlugin(router),
                                    extra=[deployment("openai/not-a-router-model")])  # never chosen: unknown
    want = router.route([PROMPT], "max_quality")[0]
    assert ask(lrouter) == f"answer of openai/{want.model}"
    candidates, signals = recorder.seen[-1]
    assert candidates == [f"openai/{want.model}"]
    assert signals["routoo"]["model"] == want.model
    assert signals["routoo"]["expected_cost"] == pytest.approx(want.expected_cost)


def test_policy_from_request_metadata_and_from_the_plugin():
    router = small_router()
    cheap = router.route([PROMPT], CHEAP)[0].model
    assert cheap != router.route([PROMPT], "max_quality")[0].model  # the two policies disagree here
    lrouter, _ = make_router(RoutooPlugin(router))
    assert ask(lrouter, metadata={"routoo_policy": CHEAP}) == f"answer of openai/{cheap}"
    lrouter, _ = make_router(RoutooPlugin(router, policy=CHEAP))
    assert ask(lrouter) == f"answer of openai/{cheap}"


def test_model_map_names_deployments():
    router = small_router()
    want = router.route([PROMPT], f"max_quality,models={MODELS[1]}|{MODELS[3]}")[0].model
    plugin = RoutooPlugin(router, model_map={"azure/prod-a": MODELS[1], "azure/prod-b": MODELS[3]})
    lrouter = litellm.Router(model_list=[deployment("azure/prod-a"), deployment("azure/prod-b")], plugins=[plugin])
    alias = "azure/prod-a" if want == MODELS[1] else "azure/prod-b"
    assert ask(lrouter) == f"answer of {alias}"
    with pytest.raises(ValueError, match="does not know"):
        RoutooPlugin(router, model_map={"azure/x": "no-such-model"})
    with pytest.raises(TypeError, match="saved router's path"):
        RoutooPlugin(42)


def test_a_group_routoo_cannot_map_is_left_alone():
    plugin = RoutooPlugin(small_router())
    context = SimpleNamespace(candidate_models=["openai/a", "openai/b"], metadata={}, signals={},
                              structured_messages=[{"role": "user", "content": PROMPT}])
    out = asyncio.run(plugin.run(context))
    assert out.candidate_models == ["openai/a", "openai/b"] and "skipped" in out.signals["routoo"]


def test_bad_policy_in_metadata_fails_the_request_naming_it():
    lrouter, _ = make_router(RoutooPlugin(small_router()))
    with pytest.raises(Exception, match="routoo_policy"):
        ask(lrouter, metadata={"routoo_policy": "lambda=-1"}, num_retries=0)


def test_example_proxy_config_loads_the_plugin():
    yaml = pytest.importorskip("yaml")
    # the loader the proxy's resolve_routing_plugins calls (importing proxy_server needs the proxy's extras)
    from litellm.proxy.types_utils.utils import get_instance_fn
    from litellm.types.router import RoutingPlugin

    config = yaml.safe_load((DOCS / "config.yaml").read_text())
    (path,) = config["router_settings"]["plugins"]
    plugin = get_instance_fn(value=path, config_file_path=str(DOCS / "config.yaml"))
    assert isinstance(plugin, RoutooPlugin) and isinstance(plugin, RoutingPlugin)
    assert asyncio.iscoroutinefunction(plugin.run)  # the proxy's load-time check
    assert not plugin.loaded  # the shipped router loads on the first request, not at config load
    models = [d["litellm_params"]["model"] for d in config["model_list"]]
    from routoo_fast.saved import load_router
    from routoo_fast.router import DEFAULT_ROUTER

    known = load_router(DEFAULT_ROUTER).model_names
    assert all(plugin.router_model(m, known) for m in models)  # every example deployment maps to a router model
