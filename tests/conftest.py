import pytest
import torch

import fewseg


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests (real data, long)")


def pytest_collection_modifyitems(config, items):
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
