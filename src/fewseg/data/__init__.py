"""Datasets (sources that list records), episodes and the sampler."""
import importlib


def register_datasets() -> None:
    """Import every dataset module so each registers itself (idempotent)."""
    for module in ("fewseg.data.synthetic", "fewseg.data.sources.folder", "fewseg.data.sources.labelmap",
                   "fewseg.data.sources.pascal5i", "fewseg.data.sources.coco20i",
                   "fewseg.data.sources.mixture"):
        importlib.import_module(module)
