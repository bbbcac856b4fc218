#!/usr/bin/env bash
# GPU check for a CUDA machine: builds the package in place (no network), runs the CUDA tests of the Triton
# pool+score kernel and the CUDA benchmark group (Triton vs torch eager vs torch.compile), then times a
# MiniLM-shaped encoder forward (random weights: the shipped weights are not needed for a timing) against the
# fused pool+score at batch 64. Writes logs and the benchmark JSON to ${OUT:-gpu_out}.
set -uo pipefail
out=${OUT:-gpu_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_pool_score_triton.py tests/test_pool_score.py \
    tests/test_pool_score_compile.py 2>&1 | tee "$out/gpu_tests.log" | tail -5
python3 -m pytest -q -p no:cacheprovider benchmarks/bench_pool_score.py -k cuda --benchmark-enable \
    --benchmark-columns=median,iqr,rounds --benchmark-json "$out/bench_pool_score_cuda.json" 2>&1 \
    | tee "$out/bench.log" | grep -E "^(test_|---|Name)|passed|failed|error" | head -60
python3 - <<'PY' 2>&1 | tee "$out/encoder_vs_pool_score.log"
import torch
from transformers import BertConfig, BertModel
from routoo_fast.pool_score import pool_score
from triton.testing import do_bench
torch.manual_seed(0)
cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
for dtype in (torch.float16, torch.float32):
    enc = BertModel(cfg).to("cuda", dtype).eval()
    for B, T, N in ((1, 16, 29), (64, 128, 29), (64, 256, 64)):
        ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
        mask = torch.ones(B, T, dtype=torch.long, device="cuda")
        with torch.inference_mode():
            t_enc = do_bench(lambda: enc(input_ids=ids, attention_mask=mask).last_hidden_state)
            h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
            w = dict(W1=torch.randn(128, 384, device="cuda"), b1=torch.zeros(128, device="cuda"),
                     E=torch.randn(N, 128, device="cuda"), b=torch.zeros(N, device="cuda"))
            t_ps = do_bench(lambda: pool_score(h, mask, backend="triton", act="gelu", **w))
        print(f"{str(dtype)[6:]:8s} B={B:3d} T={T:3d} N={N:2d}: encoder {t_enc*1e3:8.1f} us  "
              f"pool+score {t_ps*1e3:6.1f} us  share {t_ps/(t_enc+t_ps):6.2%}  prompts/s {B/(t_enc+t_ps)*1e3:9.0f}")
PY
