import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import fewseg


def pytest_configure(config):
    """Ctrl-C as Python's default in every test process: pytest-xdist's workers start with SIGINT ignored, which
    the tests of Ctrl-C handling (and the subprocesses they start, which inherit it) must not see."""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    share_the_cores()


def share_the_cores():
    """Under pytest-xdist (``-n N``), each worker and every process it starts runs torch on cores / N threads:
    N workers with torch's default (one thread per core) oversubscribe the machine and each runs several times
    slower. A plain ``pytest`` run keeps torch's default."""
    import os
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests (real data, long)")


# the modules that take longest (2026-12-07, `--durations=0` under -n 2, seconds: 139, 103, 51, 41, 38, 22, 19, 19
# of a 564 s total), started first so that under `pytest -n 2 --dist loadfile` no worker is left with a long module
# at the end while the other idles
LONGEST_MODULES = ("test_distributed.py", "test_reliability.py", "test_examples.py", "test_pretrained.py",
                   "test_end_to_end.py", "test_serve.py", "test_algorithm_options.py", "test_inner_checkpoint.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def random_batch(T=2, S=3, Q=2, size=16, dtype=torch.float32, seed=0, ignore=False) -> fewseg.MetaBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(T, S, 3, size, size, generator=g, dtype=dtype)
    qx = torch.rand(T, Q, 3, size, size, generator=g, dtype=dtype)
    sy = (torch.rand(T, S, 1, size, size, generator=g) > 0.6).to(dtype)
    qy = (torch.rand(T, Q, 1, size, size, generator=g) > 0.6).to(dtype)
    si = qi = None
    if ignore:
        si = torch.rand(T, S, 1, size, size, generator=g) > 0.8
        qi = torch.rand(T, Q, 1, size, size, generator=g) > 0.8
    return fewseg.MetaBatch(sx, sy, qx, qy, si, qi)


def unrolled_reference(model, batch, steps, lr, adapt):
    """Second-order MAML written out: torch.autograd.grad(create_graph=True) over the adapted names only."""
    names = [n for n, _ in model.named_parameters()]
    theta = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    total = 0.0
    for t in range(batch.num_tasks):
        phi = dict(theta)
        for _ in range(steps):
            logits = functional_call(model, {**phi, **buffers}, (batch.support_x[t],))
            loss = F.binary_cross_entropy_with_logits(logits, batch.support_y[t])
            grads = torch.autograd.grad(loss, [phi[n] for n in adapt], create_graph=True)
            phi = {**phi, **{n: phi[n] - lr * g for n, g in zip(adapt, grads)}}
        logits = functional_call(model, {**phi, **buffers}, (batch.query_x[t],))
        total = total + F.binary_cross_entropy_with_logits(logits, batch.query_y[t]) / batch.num_tasks
    return total.detach(), torch.autograd.grad(total, [theta[n] for n in names])


def ctrl_c_during(monkeypatch, algo, call: int) -> dict:
    """Make ``algo.meta_backward`` raise KeyboardInterrupt at its ``call``-th call (Ctrl-C mid-iteration);
    returns the call counter. Each call checks that the trainer passes the outer iteration in."""
    original, calls = algo.meta_backward, {"n": 0}

    def flaky(batch, *, iteration, **kw):
        calls["n"] += 1
        assert iteration == calls["n"] - 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(batch, iteration=iteration, **kw)

    monkeypatch.setattr(algo, "meta_backward", flaky)
    return calls


def run_cli(args, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``fewseg ARGS`` run in-process (argparse's exit included)."""
    from fewseg.cli import main
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        rc = exc.code
    return rc, capsys.readouterr().err


def one_line_exit_2(rc: int, err: str, warnings_allowed: bool = False) -> str:
    """The error line of a CLI run that failed as a user error should: exit 2, no traceback, no internal error,
    one line (``warnings_allowed``: ``fewseg: warning:`` lines before it too)."""
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if not (warnings_allowed and ln.startswith("fewseg: warning:"))]
    assert len(lines) == 1 and lines[0].startswith("fewseg"), err
    return lines[0]


def tiny_config(seed: int, image_size: int = 16, model: dict | None = None, train: dict | None = None,
                eval: dict | None = None) -> dict:
    """A run that trains in about a second: synthetic data, a tiny network, MAML with one inner step."""
    cfg = {"seed": seed, "data": {"name": "synthetic", "image_size": image_size},
           "model": model or {"name": "seed-cnn", "options": {"width": 4}},
           "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.1},
           "train": {"iterations": 2, "meta_batch": 1, "shots": 1, "queries": 1, "val_every": 2, "val_episodes": 2,
                     "checkpoint_every": 2, **(train or {})}}
    cfg["eval"] = {**SMALL_TUNING, **(eval or {})}
    return cfg


# the test-time plan search that ends every training run (eval.tune), kept to a few candidates in the tests: the
# default grid (9 step counts x 3 rates x views, 20 val episodes per shot count) costs ~30 s even for a tiny network
SMALL_TUNING = {"lr_select_episodes": 2, "tune_steps": [0, 1, 2], "tune_rate_scales": [1.0], "tune_views": 1}


def tiny_eval(episodes: int, shots: int = 1, queries: int = 1, transfer_images: int = 4, long_steps: int = 1,
              lr_select_episodes: int = 1) -> dict:
    return {"shots": [shots], "queries": queries, "episodes": episodes, "long_steps": long_steps,
            "transfer_images": transfer_images, "lr_select_episodes": lr_select_episodes}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained U-Net run (tests/userpath.py), once per test module that asks for it."""
    from userpath import tiny_run
    return tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def seg(run):
    """``fewseg.load`` of that run."""
    return fewseg.load(run)
