"""A new algorithm: MAML whose inner learning rate decays step by step (option ``lr_decay``).

    python examples/extend_algorithm.py          # a few seconds on one CPU core

The steps of docs/extending.md ("A new algorithm"): subclass ``fewseg.MetaAlgorithm``, list the new option in
``OPTIONS`` *and* take it as a keyword of ``__init__``, override one hook (``lr_for``: the inner rate of a parameter
at an inner step), register the class under a new name. Then: ``lr_decay=1`` is exactly MAML, a few meta-training
iterations with the Python API, an evaluation on classes never trained on (four iterations: the scores only show
the calls), and the one-line errors for an option the algorithm does not know, a value it refuses, and the new
option given to plain MAML.
"""
import copy

import torch

import fewseg
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.registry import ALGORITHMS


@ALGORITHMS.register("maml-decay")
class DecayingRateMAML(fewseg.MetaAlgorithm):
    """MAML whose inner step k runs at ``inner_lr * lr_decay**k``: large first steps, then smaller ones."""

    name = "maml-decay"                                    # the same name as registered: errors and logs use it
    OPTIONS = fewseg.MetaAlgorithm.OPTIONS | {"lr_decay"}  # every core option of MAML, plus the new one

    def __init__(self, model, lr_decay: float = 0.5, **options):
        if isinstance(lr_decay, bool) or not isinstance(lr_decay, (int, float)) or not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be a number in (0, 1], got {lr_decay!r}")
        super().__init__(model, **options)                 # resolves and checks the core options
        self.lr_decay = float(lr_decay)

    def lr_for(self, step: int, name: str) -> float:
        """The hook every inner step (training, test-time adaptation, recomputation) reads its rate from."""
        return self.inner_lr * self.lr_decay ** step


torch.manual_seed(0)
train_set = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=24)
sampler = fewseg.EpisodeSampler(train_set, shots=2, queries=2, seed=0)

model = fewseg.create_model("seed-cnn", width=8)
algo = fewseg.create_algorithm("maml-decay", model, inner_steps=3, inner_lr=0.2, lr_decay=0.5)
rates = [algo.lr_for(k, algo.adapt_names[0]) for k in range(algo.inner_steps)]
print("inner rates per step: " + ", ".join(f"{r:g}" for r in rates))

# lr_decay=1 must be MAML itself: the same meta-loss from the same weights on the same tasks
batch = sampler.meta_batch(2)
twin = copy.deepcopy(model)
decay_one = fewseg.create_algorithm("maml-decay", model, inner_steps=3, inner_lr=0.2, lr_decay=1.0)
maml = fewseg.create_algorithm("maml", twin, inner_steps=3, inner_lr=0.2)
a, b = (float(x.outer_loss(batch, iteration=0).detach()) for x in (decay_one, maml))
print(f"lr_decay=1 meta-loss {a:.6f}, maml meta-loss {b:.6f}")
model.zero_grad()

optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)
for i in range(4):                                                  # meta-training
    optimizer.zero_grad()
    logs = algo.meta_backward(sampler.meta_batch(2), iteration=i)   # meta-gradient into .grad
    optimizer.step()
    print(f"iteration {i}: meta-loss {logs['loss']:.4f}")

algo.eval()
test_set = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=24)
episodes = fewseg.EpisodeSampler(test_set, shots=2, queries=2, seed=1).fixed_episodes(4)
summary = evaluate(MetaLearner(algo), episodes)
print(f"mIoU {summary['miou']:.4f}  FB-IoU {summary['fb_iou']:.4f}  episodes {summary['n_episodes']}")

for name, options in (("maml-decay", {"lr_decya": 0.5}), ("maml-decay", {"lr_decay": 2.0}),
                      ("maml", {"lr_decay": 0.5})):
    try:
        fewseg.create_algorithm(name, fewseg.create_model("seed-cnn", width=8), **options)
    except ValueError as exc:
        print(f"refused: {exc}")
    else:
        raise SystemExit(f"{name} accepted {options}")
