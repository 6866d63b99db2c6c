"""Training batches: shuffled stacks or slices served from tensors already on the device, each
rank of a DistributedDataParallel run taking its own share of one shared permutation."""

from __future__ import annotations

from typing import Iterator

import torch

from cmrseg.data.dataset import StackDataset


class StackBatcher:
    """Shuffled batches served from tensors already on ``device``.

    Args:
        dataset: a :class:`StackDataset` (its ``mode`` decides stacks or slices).
        batch_size: stacks (stack mode) or slices (slice mode) per batch.
        device: where the data lives and batches are made.
        rank, world_size: for DistributedDataParallel; each rank takes every
            ``world_size``-th item of one shared permutation (same number per rank).
        seed: shuffling seed (the epoch is added, so every epoch differs reproducibly).
    """

    def __init__(self, dataset: StackDataset, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, seed: int = 0, drop_last: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.drop_last = drop_last
        self.images = [torch.from_numpy(r.image).to(self.device) for r in dataset.records]
        self.labels = [torch.from_numpy(r.label).to(self.device) for r in dataset.records]

    def _order(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank::self.world_size][:per_rank]

    def num_batches(self) -> int:
        n = len(self._order(0))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[dict]:
        order = self._order(epoch)
        index = self.dataset.index
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            imgs, labs, sizes, names = [], [], [], []
            for i in chunk:
                rec_i, s = index[i]
                sl = slice(None) if s is None else slice(s, s + 1)
                imgs.append(self.images[rec_i][sl])
                labs.append(self.labels[rec_i][sl])
                sizes.append(int(imgs[-1].shape[0]))
                names.append(self.dataset.records[rec_i].name)
            yield {
                "image": torch.cat(imgs).float().div_(255.0)[:, None],
                "label": torch.cat(labs).long(),
                "stack_sizes": sizes,
                "names": names,
                "indices": chunk,
                "heart_centers": torch.from_numpy(self.dataset.heart_centers[chunk]),
            }
