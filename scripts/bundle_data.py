"""Regenerate the bundled original-MMLU part of MMLU-Pro in routoo_fast/assets from ../shared/data.

    python scripts/bundle_data.py [--src ../shared/data/mmlu_pro_outputs] [--out routoo_fast/assets]

Writes (atomically):
  routoo_fast/assets/mmlu_pro_ori_questions.jsonl.gz  one row per question: question_id, question, options, category, src
  routoo_fast/assets/mmlu_pro_ori_outcomes.npz        question_id int64 [P], models str [N],
                                                      correctness int8 [P, N] (1, 0, -1 = no record),
                                                      output_chars int32 [P, N] (-1 = no record)
The gzip header carries no timestamp (mtime=0), so the same source gives byte-identical files.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import numpy as np

from routoo_fast._atomic import atomic_write_bytes
from routoo_fast.data import BUNDLE_OUTCOMES, BUNDLE_QUESTIONS, load_mmlu_pro, shared_data_dir


def build_bundle(src: Path, out: Path) -> list[Path]:
    """Write the two bundle files for the MMLU-Pro copy in `src` into folder `out`; return their paths."""
    table = load_mmlu_pro(src, source="ori_mmlu")  # validates the source
    qpath, opath = out / BUNDLE_QUESTIONS.name, out / BUNDLE_OUTCOMES.name
    keep = set(table.meta["id"].tolist())
    lines = []
    with open(src / "questions.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["question_id"] in keep:
                slim = {k: row[k] for k in ("question_id", "question", "options", "category", "src")}
                lines.append(json.dumps(slim, ensure_ascii=False))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write_bytes(qpath, buf.getvalue())

    correct = np.where(np.isnan(table.scores), -1, table.scores).astype(np.int8)
    chars = np.where(np.isnan(table.output_tokens), -1, np.rint(table.output_tokens * 4)).astype(np.int32)
    buf = io.BytesIO()
    np.savez_compressed(buf, question_id=table.meta["id"].astype(np.int64), models=np.array(table.models),
                        correctness=correct, output_chars=chars)
    atomic_write_bytes(opath, buf.getvalue())
    for p in (qpath, opath):
        p.chmod(0o644)  # mkstemp creates 0600; package data must be world-readable
    return [qpath, opath]


def main() -> None:
    default_src = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=None if default_src is None else default_src / "mmlu_pro_outputs")
    parser.add_argument("--out", type=Path, default=BUNDLE_QUESTIONS.parent)
    args = parser.parse_args()
    if args.src is None:
        parser.error("no --src given and ../shared/data not found (set ROUTOO_SHARED_DATA)")
    for p in build_bundle(args.src, args.out):
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
