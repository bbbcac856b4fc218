"""The routoo plugin of the example LiteLLM proxy config (config.yaml beside this file names it as
`routoo_plugin.plugin`). The shipped router is loaded on the first request; give your own router directory, an
encoder backend or a map of LiteLLM model names to the router's where the last path segment is not the name."""
from routoo_fast.serve.litellm_plugin import RoutooPlugin

plugin = RoutooPlugin(
    "default",  # or the directory `routoo-fast train` wrote
    policy="max_cost=0.002",  # the default; a request may send metadata {"routoo_policy": "max_quality"}
    # LiteLLM model -> router model, where the last path segment is not already the router's name
    model_map={"together_ai/meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": "Meta-Llama-3_1-70B-Instruct"},
    encoder_backend="onnx-int8",
    q_cache_bytes=64 * 1024 * 1024,
)
