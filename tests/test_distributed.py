"""Two ranks (torchrun, gloo, CPU) against one process: the same meta-gradients, weights and evaluation."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_cases import CASES, build, episodes, meta_batch

from fewseg.engine.evaluator import MetaLearner, evaluate

HERE = Path(__file__).parent


def torchrun(args: list[str], tmp_path: Path, timeout: float = 240, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    proc = torchrun([str(HERE / "dist_worker.py"), str(tmp / "out.pt")], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "out.pt", weights_only=True)


def assert_close_rel(got, want, rtol=1e-6):
    g = torch.cat([t.flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    assert float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)) < rtol


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_meta_gradient_of_one_process(two_ranks, case):
    algo = build(case)
    logs = algo.meta_backward(meta_batch(), iteration=3)
    want = [p.grad if p.grad is not None else torch.zeros_like(p) for p in algo.parameters()]
    assert_close_rel(two_ranks[case]["grads"], want)
    assert two_ranks[case]["weights"] == pytest.approx(logs["task_weights"], rel=1e-12)
    assert two_ranks[case]["loss"] == pytest.approx(logs["loss"], rel=1e-12)


def test_two_ranks_give_the_evaluation_of_one_process(two_ranks):
    single = evaluate(MetaLearner(build("maml").eval()), episodes())
    dist = two_ranks["evaluate"]
    for key in ("miou", "fb_iou", "episode_iou_mean", "episode_iou_ci95", "n_episodes", "per_class"):
        assert dist[key] == single[key], key
