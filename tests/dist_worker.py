"""Run by tests/test_distributed.py under torchrun: the meta-gradient and evaluation of each case, this rank's
share, summed across ranks; rank 0 saves them (torch.save of plain tensors) to argv[1]."""
import sys

import torch

from fewseg.distributed import close_process_group, init_process_group
from fewseg.engine.evaluator import MetaLearner, evaluate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from dist_cases import CASES, build, episodes, meta_batch


def main(path: str) -> None:
    torch.set_num_threads(1)
    group = init_process_group(torch.device("cpu"), timeout_s=60)
    out = {}
    for name in CASES:
        algo = build(name)
        logs = algo.meta_backward(meta_batch(), iteration=3, group=group)
        group.sum_grads(algo.parameters())
        out[name] = {"grads": [p.grad.clone() for p in algo.parameters()], "loss": logs["loss"],
                     "weights": logs["task_weights"]}
    algo = build("maml").eval()
    out["evaluate"] = evaluate(MetaLearner(algo), episodes(), group=group)
    if group.is_main:
        torch.save(out, path)
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
