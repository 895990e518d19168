"""Transfer-learning pre-training: the same network trained conventionally on all train classes' masks.

Each training example is one image of a train class with that class's binary mask, in shuffled
mini-batches (standard supervised training, no episodes, no inner loop).

Example:
    >>> import fewseg
    >>> from fewseg.baselines.transfer import pretrain_transfer
    >>> train_set = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16)
    >>> model = pretrain_transfer(fewseg.create_model("seed-cnn", width=4), train_set, image_passes=8,
    ...                           batch_size=4, seed=0)          # e.g. image_passes=20000 for a real run
    >>> model(train_set.load(0, train_set.class_ids()[0]).image[None]).shape
    torch.Size([1, 1, 16, 16])
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from fewseg.data.base import SegmentationDataset
from fewseg.losses import get_loss


def pretrain_transfer(model: torch.nn.Module, dataset: SegmentationDataset, image_passes: int,
                      batch_size: int = 20, lr: float = 1e-3, seed: int = 0, loss: str = "bce",
                      device: torch.device | str = "cpu", progress: bool = False) -> torch.nn.Module:
    """Adam on mini-batches of (image, binary mask of its class) for ``image_passes`` images in total."""
    generator = torch.Generator().manual_seed(seed)
    classes = [c for c in dataset.class_ids() if len(dataset.items(c)) > 0]
    items = {c: list(dataset.items(c)) for c in classes}
    loss_fn = get_loss(loss)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    steps = max(1, image_passes // batch_size)
    for _ in tqdm(range(steps), disable=not progress, desc="transfer pre-training", dynamic_ncols=True):
        samples = []
        for _ in range(batch_size):
            c = classes[int(torch.randint(len(classes), (1,), generator=generator))]
            key = items[c][int(torch.randint(len(items[c]), (1,), generator=generator))]
            samples.append(dataset.load(key, c))
        x = torch.stack([s.image for s in samples]).to(device)    # [B,3,H,W]
        y = torch.stack([s.mask for s in samples]).to(device)     # [B,1,H,W]
        ign = torch.stack([s.ignore for s in samples]).to(device)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y, ign).backward()
        opt.step()
    model.eval()
    return model
