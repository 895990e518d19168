"""The cases shared by the distributed test and its torchrun worker (one process vs two ranks)."""
import torch
from conftest import random_batch

import fewseg

CASES = {
    "maml": ("maml", {}), "fomaml": ("fomaml", {}), "reptile": ("reptile", {}), "meta-sgd": ("meta-sgd", {}),
    "maml++": ("maml++", {"first_order_iterations": 2, "msl_iterations": 5}),
    "mr-maml": ("mr-maml", {"init_log_sigma": -2.0}),
    "maml-hard": ("maml", {"task_weighting": "hard", "weight_temperature": 0.1}),
    "maml-class-frequency": ("maml", {"task_weighting": "class-frequency"}),
    "maml-recompute": ("maml", {"inner_checkpoint": True}),
    "maml-vmap": ("maml", {"strategy": "vmap"}), "maml-vmap-chunks": ("maml", {"strategy": "vmap", "task_chunk": 2}),
    "reptile-hard": ("reptile", {"task_weighting": "hard", "weight_temperature": 0.1}),
    "anil": ("anil", {}),
}


def build(case: str):
    name, options = CASES[case]
    torch.manual_seed(0)
    model = fewseg.create_model("seed-cnn", width=4).double()
    return fewseg.create_algorithm(name, model, inner_steps=2, inner_lr=0.3, class_counts={0: 4, 1: 9, 2: 30},
                                   **options).double()


def meta_batch():
    batch = random_batch(T=5, S=2, Q=2, size=8, dtype=torch.float64)  # 5 tasks: 3 + 2 on two ranks
    batch.query_y[4] = 1.0
    batch.class_ids = [0, 1, 2, 1, 0]
    return batch


def episodes():
    return [random_batch(T=1, S=2, Q=2, size=8, dtype=torch.float64, seed=k).task(0) for k in range(7)]
