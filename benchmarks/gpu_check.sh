#!/usr/bin/env bash
# The GPU check of the speed issue, as one short script for a lent GPU machine (device tool):
# meta-step on CUDA at 128x128 for T=4 and T=16 (per-task loop, vmap over all tasks, vmap in chunks of 4,
# inner-loop checkpointing whole and one image at a time, first order, ANIL, plain reference), then a
# 2-minute synthetic meta-training run with bf16 autocast off/on.
# Usage (repository root, torch with CUDA installed): bash benchmarks/gpu_check.sh > $OUT/gpu.txt 2>&1
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for T in 4 16; do
  python benchmarks/meta_step.py --device cuda --size 128 --tasks "$T" --models seed-cnn unet \
    --strategies plain loop vmap vmap-chunk4 loop-ckpt loop-ckpt1 loop-fo anil --warmup 3 --repeats 10
done
for AUTOCAST in none bf16; do
  timeout -s INT 150 fewseg train --no-progress --config configs/synthetic_maml.yaml device=cuda train.iterations=2000 \
    train.val_every=100000 train.autocast=$AUTOCAST output=/tmp/gpu_train_$AUTOCAST || true
  python - "$AUTOCAST" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(f"/tmp/gpu_train_{sys.argv[1]}/log.jsonl")]
print(f"autocast={sys.argv[1]}: {len(rows)} iterations in ~150 s, median {statistics.median(r['seconds'] for r in rows):.3f} s/it, "
      f"data wait {100 * sum(r['data_seconds'] for r in rows) / sum(r['seconds'] for r in rows):.1f}%")
PY
done
