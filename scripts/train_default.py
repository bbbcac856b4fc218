"""Rebuild the shipped default router: `routoo-fast train` on the bundled data, nothing else.

    python scripts/train_default.py [--out routoo_fast/assets/default_router] [--reencode]

It runs `routoo-fast train OUT --data default` (the recipe with its knobs chosen on val, refitted on train + val,
the test fraction 0.2 held out: the bundled reproduction scores the router on exactly that split). The bundled
prompts' encodings come from the shipped float16 file (routoo_fast/assets/encodings/), so training sees exactly
what the reproduction sees. --reencode first encodes the 6,810 prompts with the shipped MiniLM again and rewrites
that file (needed only when the encoder changes; minutes on a CPU).
"""
from __future__ import annotations

import argparse
import sys
import time

from routoo_fast import cli
from routoo_fast.router import DEFAULT_ROUTER


def reencode() -> None:
    from routoo_fast.data import load_default
    from routoo_fast.data.encoding_cache import SHIPPED_ENCODINGS, save_shipped_encodings
    from routoo_fast.encoder import Encoder

    table = load_default()
    encoder = Encoder()
    t0 = time.perf_counter()
    emb = encoder.encode(table.prompts)
    save_shipped_encodings(SHIPPED_ENCODINGS, table.prompts, emb, encoder.encoder_id)
    print(f"encoded {table.n_prompts} prompts in {time.perf_counter() - t0:.0f} s -> {SHIPPED_ENCODINGS}",
          file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_ROUTER), help="router directory to write (default: the shipped one)")
    ap.add_argument("--reencode", action="store_true", help="rewrite the shipped encodings first")
    ap.add_argument("--threads", default="1", help="torch CPU threads (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.reencode:
        reencode()
    return cli.main(["train", args.out, "--data", "default", "--threads", args.threads])


if __name__ == "__main__":
    sys.exit(main())
