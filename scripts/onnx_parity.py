"""Print the parity figures of the ONNX encoder backends against the torch fp32 encoder on the bundled held-out
split (routoo_fast.evaluation.encoder_parity): mean |dQ|, the same decision under the default lambda policy,
per-model AUC delta, quality at the best model's cost; each against the issue's bar.

    python scripts/onnx_parity.py                 # the whole held-out split (a few minutes on 2 cores)
    python scripts/onnx_parity.py --limit 300 --json parity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", default="default", help="router directory or 'default'")
    p.add_argument("--backends", default="onnx,onnx-int8", help="comma-separated encoder backends")
    p.add_argument("--limit", type=int, default=None, help="held-out prompts to draw (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of each encoder (default: all)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    from routoo_fast.evaluation.encoder_parity import encoder_parity

    start = time.perf_counter()
    reports, context = encoder_parity(tuple(args.backends.split(",")), args.router, args.limit, args.threads)
    print(f"held-out prompts measured: {context['measured']} of {context['held_out_prompts']} "
          f"(test fraction {context['test_fraction']}); default lambdas {context['lambdas'][0]:.4g} and "
          f"{context['lambdas'][1]:.4g} (calibrated on val to spend the best-on-val model's cost, and half of it); "
          f"{time.perf_counter() - start:.0f} s")
    print("bars: mean|dQ| <= {mean_abs_dq}, same decision >= {agreement:.0%}, AUC delta <= {auc_delta}, "
          "quality@best-cost delta <= {quality_delta_points} pt".format(**context["bars"]))
    for r in reports:
        print(r.line())
    if args.json_out:
        from routoo_fast._atomic import atomic_write_text

        atomic_write_text(args.json_out, json.dumps({"context": context, "reports": [r.to_dict() for r in reports]},
                                                    indent=2))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
