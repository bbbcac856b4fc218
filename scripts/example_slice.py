"""Write the worked example of docs/TRAINING.md: a small slice of real outcomes as a user would have them.

    python scripts/example_slice.py OUT_DIR [--prompts 400]

From ZeroEval's GSM8K outcomes (../shared/data/zeroeval, or $ROUTOO_SHARED_DATA/zeroeval; Apache-2.0 / MIT) take
the first N questions and six models of very different size and price, and write
  OUT_DIR/outcomes.csv  long format, one row per call: prompt, model, score (1 = correct), output_tokens
  OUT_DIR/prices.csv    USD per 1M input / output tokens for those six models, in the columns of assets/prices.csv
The prices are this example's own ("negotiated"), so they override the shipped ones. Both files are written
atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

MODELS = ("gemma-2-2b-it", "Meta-Llama-3-8B-Instruct", "gemma-2-9b-it", "gpt-4o-mini-2024-07-18",
          "deepseek-v2-chat-0628", "claude-3-5-sonnet-20240620")
# model: (input, output) USD per 1M tokens, open weights
PRICES = {"gemma-2-2b-it": (0.05, 0.05, True), "Meta-Llama-3-8B-Instruct": (0.15, 0.15, True),
          "gemma-2-9b-it": (0.25, 0.25, True), "gpt-4o-mini-2024-07-18": (0.15, 0.60, False),
          "deepseek-v2-chat-0628": (0.14, 0.28, True), "claude-3-5-sonnet-20240620": (3.00, 15.00, False)}


def write_example(out_dir, n_prompts: int = 400, data_dir=None) -> tuple[Path, Path]:
    """Write outcomes.csv and prices.csv into `out_dir`; returns their paths."""
    from routoo_fast._atomic import atomic_write_text
    from routoo_fast.data import load_zeroeval, shared_data_dir

    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    if root is None or not (Path(root) / "zeroeval").is_dir():
        raise FileNotFoundError("the shared data folder with zeroeval/ was not found: set ROUTOO_SHARED_DATA")
    table = load_zeroeval(Path(root) / "zeroeval", "gsm").select_models(MODELS)
    table = table.subset(list(range(min(n_prompts, table.n_prompts))))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prompt", "model", "score", "output_tokens"])
    for i, prompt in enumerate(table.prompts):
        for j, model in enumerate(table.models):
            score, tokens = float(table.scores[i, j]), float(table.output_tokens[i, j])
            if not math.isnan(score):
                w.writerow([prompt, model, int(score), "" if math.isnan(tokens) else round(tokens)])
    atomic_write_text(out / "outcomes.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "input_usd_per_mtok", "output_usd_per_mtok", "open_weights", "source"])
    for model, (pin, pout, open_weights) in PRICES.items():
        w.writerow([model, pin, pout, "true" if open_weights else "false", "worked example"])
    atomic_write_text(out / "prices.csv", buf.getvalue())
    return out / "outcomes.csv", out / "prices.csv"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--prompts", type=int, default=400, help="questions to take (default: %(default)s)")
    args = ap.parse_args(argv)
    for path in write_example(args.out_dir, args.prompts):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
