"""Training batches: shuffled stacks or slices served from tensors already on the device, each
rank of a DistributedDataParallel run taking its own share of one shared permutation.

Fixed-shape batches (``fixed_slices``; ``TrainConfig.fixed_shape``) have the same number of
slices at every step, so cuDNN tunes one shape and ``torch.compile`` / CUDA graphs capture one
step: whole stacks are packed into ``fixed_slices`` slices (in the shuffled order; when the next
stack does not fit, the first later one that does) and the rest is padding, marked ``-1`` in
the batch's ``stack_ids`` for the network and the loss to leave out.
"""

from __future__ import annotations

from typing import Iterator

import torch

from cmrseg.data.dataset import StackDataset
from cmrseg.device import to_device

LOOK_AHEAD = 16  # later stacks tried for the room left in a fixed-shape batch


def stack_ids(sizes: list[int], real: int) -> torch.Tensor:
    """``[sum(sizes)]`` int64 on the host: each slice's stack, ``-1`` for the slices of the
    stacks from index ``real`` on (the padding of a fixed-shape batch)."""
    return torch.tensor([i if i < real else -1 for i, s in enumerate(sizes) for _ in range(s)], dtype=torch.long)


def pack_stacks(order: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    """Items of ``order`` (with ``sizes[item]`` slices each) in batches of at most ``budget``
    slices: each batch takes the first waiting item, then the waiting items, among the next
    ``LOOK_AHEAD``, that still fit, in order."""
    waiting = list(order)
    batches = []
    while waiting:
        batch = [waiting.pop(0)]
        room = budget - sizes[batch[0]]
        k = 0
        while k < min(LOOK_AHEAD, len(waiting)) and room > 0:
            if sizes[waiting[k]] <= room:
                room -= sizes[waiting[k]]
                batch.append(waiting.pop(k))
            else:
                k += 1
        batches.append(batch)
    return batches


class StackBatcher:
    """Shuffled batches served from tensors already on ``device``.

    Args:
        dataset: a :class:`StackDataset` (its ``mode`` decides stacks or slices).
        batch_size: stacks (items of mode ``stack``) or slices (mode ``slice``) per batch.
        device: where the data lives and batches are made.
        rank, world_size: for DistributedDataParallel; each rank takes every
            ``world_size``-th item of one shared permutation (same number per rank).
        seed: shuffling seed (the epoch is added, so every epoch differs reproducibly).
        fixed_slices: fixed-shape batches (module docstring): mode ``stack`` packs whole stacks into
            this many slices (at least the longest stack) and ignores ``batch_size``; slice mode
            serves ``batch_size`` slices and drops the epoch's short last batch. Every rank gets
            the same number of batches.
    """

    def __init__(self, dataset: StackDataset, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, seed: int = 0, drop_last: bool = False,
                 fixed_slices: int | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.packed = fixed_slices is not None and dataset.mode == "stack"
        if fixed_slices is not None and not self.packed:
            drop_last = True
        self.sizes = [dataset.records[rec_i].image.shape[0] if s is None else 1 for rec_i, s in dataset.index]
        self.fixed_slices = max([fixed_slices or 0, *self.sizes]) if self.packed else None
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.drop_last = drop_last
        self.images = [torch.from_numpy(r.image).to(self.device) for r in dataset.records]
        self.labels = [torch.from_numpy(r.label).to(self.device) for r in dataset.records]

    def _order(self, epoch: int, rank: int | None = None) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank if rank is None else rank::self.world_size][:per_rank]

    def _chunks(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (dataset items)."""
        if self.packed:  # every rank packs every rank's share, so all stop at the same count
            packs = [pack_stacks(self._order(epoch, r), self.sizes, self.fixed_slices) for r in range(self.world_size)]
            return packs[self.rank][:min(map(len, packs))]
        order = self._order(epoch)
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [c for c in chunks if len(c) == self.batch_size] if self.drop_last else chunks

    def num_batches(self) -> int:
        """Batches per epoch (packed batches: epoch 0's count; later epochs differ by a few)."""
        return len(self._chunks(0))

    def epoch(self, epoch: int) -> Iterator[dict]:
        index = self.dataset.index
        for chunk in self._chunks(epoch):
            imgs, labs, sizes, names = [], [], [], []
            for i in chunk:
                rec_i, s = index[i]
                sl = slice(None) if s is None else slice(s, s + 1)
                imgs.append(self.images[rec_i][sl])
                labs.append(self.labels[rec_i][sl])
                sizes.append(int(imgs[-1].shape[0]))
                names.append(self.dataset.records[rec_i].name)
            centers = torch.from_numpy(self.dataset.heart_centers[chunk])
            batch = {"real_slices": sum(sizes), "names": names, "indices": chunk}
            if self.packed and sum(sizes) < self.fixed_slices:  # the padding: one more "stack", id -1
                pad = self.fixed_slices - sum(sizes)
                imgs.append(imgs[0].new_zeros(pad, *imgs[0].shape[1:]))
                labs.append(labs[0].new_zeros(pad, *labs[0].shape[1:]))
                centers = torch.cat([centers, centers.new_full((1, 2), float("nan"))])
                sizes = sizes + [pad]
            if self.packed:  # made on the host, sent without a sync
                batch["stack_ids"] = to_device(stack_ids(sizes, len(chunk)), self.device)
            yield {
                "image": torch.cat(imgs).float().div_(255.0)[:, None],
                "label": torch.cat(labs).long(),
                "stack_sizes": sizes,
                "heart_centers": centers,
                **batch,
            }
