"""Segmentation networks: any nn.Module mapping [B,3,H,W] images to [B,1,H,W] foreground logits."""
from fewseg.models.seed_cnn import SeedCNN
from fewseg.models.unet import UNet

__all__ = ["SeedCNN", "UNet"]
