"""routoo_fast: route each prompt to the right LLM (Routoo, arXiv 2401.13979).

`import routoo_fast` stays cheap: numpy and the C++ selector only. The predictor stack (torch, transformers,
triton) is imported lazily, the first time one of its names is used.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY = {
    "Selection": "routoo_fast.selector",
    "Frontier": "routoo_fast.selector",
    "select": "routoo_fast.selector",
    "max_quality": "routoo_fast.selector",
    "min_cost": "routoo_fast.selector",
    "tradeoff": "routoo_fast.selector",
    "budget": "routoo_fast.selector",
    "calibrate_lambda": "routoo_fast.selector",
    "frontier": "routoo_fast.selector",
    "Encoder": "routoo_fast.encoder",
    "ScoringHead": "routoo_fast.head",
    "Predictor": "routoo_fast.predictor",
    "OutcomeTable": "routoo_fast.data.table",
    "PriceTable": "routoo_fast.costs",
    "CostModel": "routoo_fast.costs",
    "Router": "routoo_fast.router",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'routoo_fast' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
