"""Run by tests/test_distributed.py under torchrun: ``fewseg train`` (the CLI's main), optionally with one rank
dying (os._exit, as a crash or an OOM kill would) at a given iteration of the first attempt.

    python dist_train.py [--die RANK:ITERATION] -- <fewseg arguments>
"""
import os
import sys

import torch


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    from fewseg.algorithms.base import MetaAlgorithm
    from fewseg.algorithms.reptile import Reptile
    from fewseg.cli import main as fewseg_main

    if argv and argv[0] == "--die":
        rank, at = (int(v) for v in argv[1].split(":"))
        argv = argv[2:]
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
        if int(os.environ.get("RANK", "0")) == rank and first_attempt:
            for cls in (MetaAlgorithm, Reptile):
                real = cls.meta_backward

                def dying(self, batch, *, iteration, _real=real, **kw):
                    if iteration == at:
                        os._exit(9)
                    return _real(self, batch, iteration=iteration, **kw)
                cls.meta_backward = dying
    return fewseg_main(argv[1:] if argv and argv[0] == "--" else argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
