"""Use a trained model on your own photos: adapt once to a new class from a few labelled images, keep the
adapted model, segment new photos of any size with it.

    python examples/segment_photos.py runs/demo my_class/ photos/ out/

RUN: a run directory (``fewseg demo`` writes runs/demo; ``fewseg train`` any other) or a checkpoint directory.
SUPPORT: 1-10 images with masks (``cat.jpg`` + ``cat.png``, ``cat_mask.png``, or a ``masks/`` subfolder); an
all-black mask marks a negative (an image without the class). PHOTOS: the images to segment. OUT: gets
``my_class/`` (the adapted model), ``<name>.png`` masks and ``<name>_overlay.png`` overlays.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import fewseg
from fewseg.engine.session import find_support_pairs
from fewseg.inputs import list_images

run, support, photos, out = (Path(a) for a in sys.argv[1:5])
out.mkdir(parents=True, exist_ok=True)

seg = fewseg.load(run)                                              # the meta-trained model (CPU)
pairs = find_support_pairs(support)                                 # [(image path, mask path), ...]
adapted = seg.adapt([img for img, _ in pairs], [mask for _, mask in pairs])   # paths, PIL, arrays or tensors
adapted.save(out / "my_class")                                      # adapt once ...
adapted = fewseg.load_adapted(out / "my_class")                     # ... use many times
for path in list_images(photos):
    pred = adapted.predict(path)                                    # masks at the photo's own size
    pred.overlay(alpha=0.5).save(out / f"{path.stem}_overlay.png")  # the mask over the photo; Jupyter shows `pred`
    Image.fromarray(pred.mask.astype(np.uint8) * 255).save(out / f"{path.stem}.png")
    print(f"{path.name}: {pred.mask.shape[1]}x{pred.mask.shape[0]}, foreground {pred.foreground_fraction:.1%}, "
          f"confidence {pred.confidence:.2f}")
print(f"adapted on {len(pairs)} images ({adapted.info['steps']} steps); masks in {out}")
