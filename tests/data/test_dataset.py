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


def test_xz_cache_roundtrip_is_exact_and_found_as_a_split(phantom_dir, tmp_path):
    """The GPU bundle's cache (``.npz.xz``, delta + LZMA2): bit-identical stacks, metadata and
    preprocessing; found by the training's split lookup; a wrong suffix is refused."""
    import pytest

    from cmrseg.training.run_folder import resolve_splits

    ds = StackDataset.from_folder(phantom_dir / "h5" / "train", CFG, progress=False)
    ds.save_cache(tmp_path / "train.npz.xz", compression="xz")
    assert (tmp_path / "train.npz.xz").read_bytes()[:6] == b"\xfd7zXZ\x00"  # an xz stream
    again = StackDataset.from_folder(tmp_path / "train.npz.xz", CFG)
    assert again.preprocess == CFG and [r.name for r in again.records] == [r.name for r in ds.records]
    for a, b in zip(again.records, ds.records):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.meta == b.meta
    (tmp_path / "val").mkdir()
    assert resolve_splits(tmp_path) == (tmp_path / "train.npz.xz", tmp_path / "val")
    with pytest.raises(ValueError, match="xz"):
        ds.save_cache(tmp_path / "c.npz", compression="xz")


def test_batcher_covers_every_item_once_per_epoch_and_shards_for_ddp(phantom_dir):
    ds = StackDataset.from_folder(phantom_dir / "h5" / "train", CFG, mode="slice", progress=False)
    b = StackBatcher(ds, batch_size=7, seed=1)
    seen = [i for batch in b.epoch(0) for i in batch["indices"]]
    assert sorted(seen) == list(range(len(ds)))
    r0 = [i for batch in StackBatcher(ds, 7, rank=0, world_size=2, seed=1).epoch(3) for i in batch["indices"]]
    r1 = [i for batch in StackBatcher(ds, 7, rank=1, world_size=2, seed=1).epoch(3) for i in batch["indices"]]
    assert not set(r0) & set(r1) and len(r0) == len(r1) == len(ds) // 2


def test_a_cache_serves_a_protocol_with_coarser_pixels_as_preprocessing_would(phantom_dir, tmp_path):
    """The GPU bundle is made for the paper protocol (1.3 mm); a ``fast`` run (1.6 mm, a smaller
    field of view) takes its canvases resampled: the same stacks as preprocessing the volumes
    with the fast protocol, up to the second interpolation; finer pixels or a wider field of
    view than the cache has are refused with the file named."""
    import pytest

    from cmrseg.errors import InputError

    paper, fast = PreprocessConfig(1.3, 256), PreprocessConfig(1.6, 192)
    StackDataset.from_folder(phantom_dir / "h5" / "train", paper, progress=False).save_cache(tmp_path / "c.npz")
    derived = StackDataset.from_folder(tmp_path / "c.npz", fast)
    direct = StackDataset.from_folder(phantom_dir / "h5" / "train", fast, progress=False)
    assert derived.preprocess == fast and [r.name for r in derived.records] == [r.name for r in direct.records]
    for a, b in zip(derived.records, direct.records):
        assert a.image.shape == b.image.shape == (b.label.shape[0], 192, 192) and a.meta == b.meta
        assert np.abs(a.image.astype(float) - b.image).mean() < 0.02 * 255
        assert (a.label == b.label).mean() > 0.995
        for c in (1, 2, 3):  # no class grows or shrinks by the detour
            assert (a.label == c).sum() == pytest.approx((b.label == c).sum(), rel=0.03)
    same = StackDataset.from_folder(tmp_path / "c.npz", paper)  # its own canvas: as stored
    assert same.preprocess == paper and same.records[0].image.shape[-2:] == (256, 256)
    for wrong in (PreprocessConfig(1.0, 256), PreprocessConfig(1.6, 256)):  # finer pixels; 410 mm > 333 mm
        with pytest.raises(InputError, match=r"c\.npz.*too coarse or its field of view too small"):
            StackDataset.from_folder(tmp_path / "c.npz", wrong)
