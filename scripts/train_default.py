"""Rebuild the shipped default router and the shipped prompt encodings, reproducibly.

    python scripts/train_default.py [--encodings FILE.npz] [--out routoo_fast/assets/default_router]

1. Encode the bundled prompts (original-MMLU part of MMLU-Pro, 6,810) with the shipped MiniLM, or take them from
   `--encodings` (an .npz with `emb` [P, D] in load_default() order, checked against a fresh encoding of a sample),
   and write them as float16 to routoo_fast/assets/encodings/ (the reproduction loads them instead of encoding).
2. Fit the head with the shipped recipe (routoo_fast.train.recipe) on the train split of split_by_hash, early-stopped on
   the val split; the test split is never touched, so the reproduction can score this router on it.
   The features used are the float16-rounded ones that are shipped, so the evaluation sees exactly them.
3. Save with saved.save_router: prices from assets/prices.csv, expected output tokens = each model's mean on the
   train split.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from routoo_fast import data as outcomes
from routoo_fast.costs import PriceTable
from routoo_fast.encoder import Encoder
from routoo_fast.train.recipe import Recipe, fit_recipe_head
from routoo_fast.evaluation.reproduce import SHIPPED_ENCODINGS, mean_output_tokens, save_shipped_encodings
from routoo_fast.router import DEFAULT_ROUTER
from routoo_fast.saved import save_router


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encodings", default=None, help="precomputed .npz (emb in load_default() order)")
    ap.add_argument("--out", default=str(DEFAULT_ROUTER), help="router directory to write")
    ap.add_argument("--encodings-out", default=str(SHIPPED_ENCODINGS), help="float16 encodings file to write")
    args = ap.parse_args(argv)

    table = outcomes.load_default()
    encoder = Encoder(num_threads=1)
    t0 = time.perf_counter()
    if args.encodings:
        with np.load(args.encodings, allow_pickle=False) as z:
            emb = z["emb"].astype(np.float32)
        if emb.shape != (table.n_prompts, encoder.hidden_size):
            raise ValueError(f"{args.encodings}: emb shape {emb.shape}, expected ({table.n_prompts}, {encoder.hidden_size})")
        sample = np.linspace(0, table.n_prompts - 1, 16).astype(int)
        fresh = encoder.encode([table.prompts[i] for i in sample])
        err = float(np.abs(fresh - emb[sample]).max())
        if err > 1e-4:
            raise ValueError(f"{args.encodings} does not match a fresh encoding (max abs diff {err:.2e})")
    else:
        emb = encoder.encode(table.prompts)
    print(f"encodings ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    save_shipped_encodings(args.encodings_out, table.prompts, emb, encoder.encoder_id)
    x = emb.astype(np.float16).astype(np.float32)

    split = outcomes.split_by_hash(table.prompts)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    recipe = Recipe()
    t0 = time.perf_counter()
    head = fit_recipe_head(x, table.scores, tr, va, groups=table.meta["subject"], recipe=recipe)
    print(f"head trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    eo = mean_output_tokens(table, tr)
    prices = PriceTable.load()
    meta = {"data": "bundled MMLU-Pro original-MMLU part (routoo_fast.data.load_default)",
            "split": "split_by_hash(prompts), fractions (0.7, 0.1, 0.2); trained on train, early-stopped on val",
            "split_sizes": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "recipe": recipe.to_dict(), "script": "scripts/train_default.py"}
    save_router(args.out, head, table.models, encoder.spec(), prices, eo, meta)
    print(f"saved {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
