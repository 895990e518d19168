"""Local weights files, read safely: safetensors, or ``torch.load(weights_only=True)`` (loading never runs code).

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/w.pth"
    >>> torch.save({"state_dict": {"module.conv.weight": torch.ones(2)}}, path)
    >>> read_state_dict(path)
    {'conv.weight': tensor([1., 1.])}
"""
from __future__ import annotations

from pathlib import Path

import torch

from fewseg.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, loaded safely: safetensors, or ``torch.load(weights_only=True)`` for
    .pth/.pt/.bin (a checkpoint dict holding "state_dict" or "model" is unwrapped). One-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"pretrained weights file {path}: expected {', '.join(WEIGHT_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (corrupt file, pickled code refused by weights_only, ...)
        raise WeightsError(f"pretrained weights file {path} could not be read safely: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pretrained weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
