#!/usr/bin/env bash
# Adapt a meta-trained checkpoint to a folder of labelled images, then segment new images.
#
#   bash examples/adapt_folder.sh [WORK_DIR]      # default: a new temporary folder; about 15 s on one core
#
# 1. a tiny meta-training run (2 iterations: it shows the commands, it does not learn much, so it skips the
#    test-time plan search; a real run is `fewseg train --config synthetic_maml` or `fewseg demo`);
# 2. a support folder of 2 images with masks (<stem>.jpg + <stem>.png), cut from the synthetic set's
#    test classes, and 3 images of the same class to segment, at a size other than the network's;
# 3. `fewseg adapt`: masks (0/255 PNG at each image's own size) in OUT/masks, overlays in OUT/overlays.
set -euo pipefail
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"

fewseg train --no-progress --config synthetic_maml \
    train.iterations=2 train.meta_batch=2 train.shots=2 train.queries=2 \
    train.val_every=2 train.val_episodes=2 train.checkpoint_every=2 \
    data.image_size=24 model.options.depth=2 model.options.width=4 eval.tune=false output="$WORK/run"

python - "$WORK" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import fewseg

work = Path(sys.argv[1])
ds = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=40)
c = ds.class_ids()[0]
(work / "support").mkdir(exist_ok=True)
(work / "images").mkdir(exist_ok=True)
for key in range(5):
    s = ds.load(key, c)                                                   # image [3,H,W] in [0,1], mask [1,H,W]
    image = Image.fromarray((s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    mask = Image.fromarray((s.mask[0].numpy() * 255).astype(np.uint8))   # 0/255
    if key < 2:                                                           # support: photo + mask, same stem
        image.save(work / "support" / f"{key}.jpg", quality=95)
        mask.save(work / "support" / f"{key}.png")
    else:                                                                 # to segment: 48x32, not the net's 24x24
        image.resize((48, 32)).save(work / "images" / f"{key}.png")
print(f"support: 2 images of class {ds.class_names[c]!r} in {work / 'support'}; 3 images in {work / 'images'}")
PY

fewseg adapt --checkpoint "$WORK/run" --support "$WORK/support" --images "$WORK/images" --output "$WORK/out"
ls "$WORK/out/masks" "$WORK/out/overlays"
