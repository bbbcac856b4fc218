"""Serving: the HTTP server (`server.create_app`), the micro-batcher that lets concurrent callers share predictor
passes (`batcher.MicroBatcher`), the upstream LLM endpoints chat requests are forwarded to (`upstreams`), and the
gateway features: actual cost per model and key (`accounting`), spend caps in SQLite (`spend`), session affinity
(`affinity`) and the LiteLLM routing plugin (`litellm_plugin.RoutooPlugin`, which needs neither the server nor
LiteLLM to import).

Nothing is imported here: `routoo_fast.serve.batcher` needs only numpy, while the server needs the `[serve]` extra
(starlette, uvicorn, httpx, prometheus-client)."""
