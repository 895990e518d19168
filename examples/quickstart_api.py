"""The Python API end to end on tiny shapes: meta-train, adapt to one test episode, predict, evaluate.

    python examples/quickstart_api.py            # about 10 s on one CPU core

The same code as the README's "Python API" section. Real runs use bigger shapes (the demo recipe:
``fewseg train --config synthetic_maml``); this one only shows the calls.
"""
import torch

import fewseg
from fewseg.engine.evaluator import MetaLearner, evaluate

torch.manual_seed(0)
model = fewseg.create_model("unet", depth=2, width=4)                  # [B,3,H,W] -> [B,1,H,W] logits
algo = fewseg.create_algorithm("maml", model, inner_steps=2, inner_lr=0.1)
train_set = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=32)
sampler = fewseg.EpisodeSampler(train_set, shots=2, queries=2, seed=0)
optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)

for i in range(5):                                                     # meta-training
    optimizer.zero_grad()
    logs = algo.meta_backward(sampler.meta_batch(4), iteration=i)      # meta-gradient into .grad
    optimizer.step()
    print(f"iteration {i}: meta-loss {logs['loss']:.4f}")

algo.eval()
test_set = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=32)   # classes never trained on
episodes = fewseg.EpisodeSampler(test_set, shots=2, queries=2, seed=1).fixed_episodes(6)
ep = episodes[0]
adapted = algo.adapt(ep.support_x, ep.support_y)                       # [S,3,H,W], [S,1,H,W] in {0,1}
probs = adapted.predict(ep.query_x)                                    # [Q,1,H,W] foreground probabilities
print(f"query probabilities: shape {tuple(probs.shape)}, range [{probs.min():.3f}, {probs.max():.3f}]")

summary = evaluate(MetaLearner(algo), episodes)                        # {"miou", "fb_iou", ...}
print(f"mIoU {summary['miou']:.4f}  FB-IoU {summary['fb_iou']:.4f}  episodes {summary['n_episodes']}")
