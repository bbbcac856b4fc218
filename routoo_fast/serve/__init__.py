"""Serving: the HTTP server (`server.create_app`), the micro-batcher that lets concurrent callers share predictor
passes (`batcher.MicroBatcher`) and the upstream LLM endpoints chat requests are forwarded to (`upstreams`).

Nothing is imported here: `routoo_fast.serve.batcher` needs only numpy, while the server needs the `[serve]` extra
(starlette, uvicorn, httpx, prometheus-client)."""
