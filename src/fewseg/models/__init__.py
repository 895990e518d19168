"""Segmentation networks: any nn.Module mapping [B,C,H,W] images (C = ``in_channels``, 3 by default) to
[B,1,H,W] foreground logits."""
from fewseg.models.seed_cnn import SeedCNN
from fewseg.models.unet import UNet

__all__ = ["SeedCNN", "UNet", "input_channels", "weights_free_options"]


def input_channels(model) -> int | None:
    """The image channels ``model`` takes: its ``in_channels``, else its first convolution's; None if unknown.

    Example:
        >>> import fewseg
        >>> input_channels(fewseg.create_model("unet", in_channels=1, depth=2, width=4))
        1
    """
    import torch

    declared = getattr(model, "in_channels", None)
    if isinstance(declared, int):
        return declared
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def weights_free_options(name: str, options: dict) -> dict:
    """The options that rebuild the registered network ``name`` without reading pretrained weights, for loading a
    checkpoint or an adapted model that holds every weight (the network class's ``weights_free_options``; the
    options themselves for networks without pretrained weights).

    Example:
        >>> weights_free_options("lite-unet", {"pretrained": "imagenet"})
        {'pretrained': False, 'batchnorm': 'frozen-stats', 'normalize': 'lite'}
        >>> weights_free_options("unet", {"depth": 2})
        {'depth': 2}
    """
    from fewseg.registry import MODELS
    rewrite = getattr(MODELS.get(name), "weights_free_options", None) if name in MODELS.names() else None
    return rewrite(dict(options)) if rewrite is not None and options.get("pretrained") else dict(options)


from fewseg.models import lite_unet as _lite_unet  # noqa: F401  (registers lite-unet, lite-probe)
from fewseg.models import timm_unet as _timm_unet  # noqa: F401  (registers timm-unet; imports timm lazily)
