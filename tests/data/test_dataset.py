import numpy as np
import torch

from cmrseg.data.dataset import StackDataset
from cmrseg.data.preprocessing import PreprocessConfig
from cmrseg.training.batching import StackBatcher

CFG = PreprocessConfig(target_spacing=1.3, canvas=128)


def test_stack_and_slice_modes_and_cache_roundtrip(phantom_dir, tmp_path):
    ds = StackDataset.from_folder(phantom_dir / "h5" / "train", CFG, progress=False)
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].ndim == 3 and item["image"].shape[1:] == (128, 128)
    assert item["image"].dtype == torch.uint8 and item["label"].shape == item["image"].shape
    ds.save_cache(tmp_path / "c.npz")
    again = StackDataset.from_cache(tmp_path / "c.npz", mode="slice")
    assert again.preprocess == CFG
    assert len(again) == ds.num_slices
    np.testing.assert_array_equal(again.records[2].label, ds.records[2].label)


def test_batcher_covers_every_item_once_per_epoch_and_shards_for_ddp(phantom_dir):
    ds = StackDataset.from_folder(phantom_dir / "h5" / "train", CFG, mode="slice", progress=False)
    b = StackBatcher(ds, batch_size=7, seed=1)
    seen = [i for batch in b.epoch(0) for i in batch["indices"]]
    assert sorted(seen) == list(range(len(ds)))
    r0 = [i for batch in StackBatcher(ds, 7, rank=0, world_size=2, seed=1).epoch(3) for i in batch["indices"]]
    r1 = [i for batch in StackBatcher(ds, 7, rank=1, world_size=2, seed=1).epoch(3) for i in batch["indices"]]
    assert not set(r0) & set(r1) and len(r0) == len(r1) == len(ds) // 2
