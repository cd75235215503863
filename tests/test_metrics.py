"""Tests for sidpipe.metrics on real photographs and on exact small cases."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from sidpipe import metrics as M


def _load(path: Path) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert("RGB"), np.float32).transpose(2, 0, 1) / 127.5 - 1
    return np.ascontiguousarray(arr, dtype=np.float32)


@lru_cache(maxsize=None)
def _full(name: str) -> np.ndarray:
    if name == "balloons":
        return _load(ROOT / "examples" / "balloons.png")
    return _load(ROOT / "tests" / "data" / f"{name}.png")


def _ref() -> np.ndarray:
    """128x192 crop of balloons with the big balloons and some crowd (fast to search)."""
    return np.ascontiguousarray(_full("balloons")[:, :128, 24:216])


def _other(name: str = "night_sky") -> np.ndarray:
    """A different photo, on purpose of another size than the reference crop."""
    return np.ascontiguousarray(_full(name)[:, :120, :170])


def _noise(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(size=shape), -1, 1).astype(np.float32)


def _shift(img) -> np.ndarray:
    return np.ascontiguousarray(np.roll(img, (37, 53), axis=(1, 2)))


# --------------------------------------------------------------------------- brute force helpers


def _patches_np(img: np.ndarray, p: int, stride: int = 1) -> np.ndarray:
    c, h, w = img.shape
    rows = []
    for y in range(0, h - p + 1, stride):
        for x in range(0, w - p + 1, stride):
            rows.append(img[:, y:y + p, x:x + p].reshape(-1))
    return np.asarray(rows, dtype=np.float64)


def _nn_brute(sample, reference, p, stride=1, query_stride=1) -> float:
    q = _patches_np(sample.astype(np.float64), p, query_stride)
    r = _patches_np(reference.astype(np.float64), p, stride)
    d2 = ((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(np.sqrt(d2.min(axis=1)) / np.sqrt(q.shape[1])))


# --------------------------------------------------------------------------- extract_patches


def test_extract_patches_matches_numpy_layout():
    rng = np.random.default_rng(1)
    img = rng.uniform(-1, 1, size=(3, 11, 13)).astype(np.float32)
    for p, s in [(3, 1), (5, 2), (7, 3)]:
        got = M.extract_patches(img, patch=p, stride=s)
        assert got.dtype == __import__("torch").float32
        np.testing.assert_array_equal(got.numpy(), _patches_np(img, p, s).astype(np.float32))
    gray = img[:1]
    assert tuple(M.extract_patches(gray, 7).shape) == (5 * 7, 49)


def test_extract_patches_rejects_too_small():
    with pytest.raises(ValueError):
        M.extract_patches(np.zeros((3, 5, 20), np.float32), patch=7)


# --------------------------------------------------------------------------- exactness of the search


@pytest.mark.parametrize("small_blocks", [False, True])
def test_nn_patch_distance_equals_brute_force(monkeypatch, small_blocks):
    if small_blocks:  # force many query and reference blocks and the candidate merge
        monkeypatch.setattr(M, "_REF_CHUNK", 29)
        monkeypatch.setattr(M, "_BLOCK_ELEMS", 29 * 37)
    rng = np.random.default_rng(2)
    sample = rng.uniform(-1, 1, size=(3, 14, 17)).astype(np.float32)
    reference = rng.uniform(-1, 1, size=(3, 12, 15)).astype(np.float32)
    # Part of the sample is a verbatim piece of the reference: exact zeros must come out.
    sample[:, 2:9, 3:12] = reference[:, 4:11, 1:10]
    for p, stride, qs in [(3, 1, 1), (5, 1, 2), (4, 2, 1)]:
        got = M.nn_patch_distance(sample, reference, patch=p, stride=stride, query_stride=qs)
        want = _nn_brute(sample, reference, p, stride, qs)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        got_cov = M.coverage_distance(sample, reference, patch=p, stride=stride, query_stride=qs)
        want_cov = _nn_brute(reference, sample, p, stride, qs)
        assert got_cov == pytest.approx(want_cov, rel=1e-5, abs=1e-6)


def test_nn_patch_distance_grayscale_and_channel_mismatch():
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, size=(1, 10, 12)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(1, 9, 9)).astype(np.float32)
    assert M.nn_patch_distance(a, b, patch=3) == pytest.approx(_nn_brute(a, b, 3), rel=1e-5)
    with pytest.raises(ValueError):
        M.nn_patch_distance(np.zeros((3, 10, 10), np.float32), b, patch=3)


# --------------------------------------------------------------------------- real images


def test_reference_against_itself():
    ref = _ref()
    assert M.patch_swd(ref, ref) < 1e-3
    assert M.nn_patch_distance(ref, ref, query_stride=2) < 1e-4
    assert M.coverage_distance(ref, ref, query_stride=2) < 1e-4
    assert M.copy_rate(ref, ref, query_stride=2) > 0.95


def test_shift_flip_noise_other_photo_are_ranked():
    ref = _ref()
    shifted, flipped = _shift(ref), np.ascontiguousarray(ref[:, :, ::-1])
    noise, other = _noise(ref.shape), _other()

    swd = {k: M.patch_swd(v, ref) for k, v in
           dict(shift=shifted, flip=flipped, noise=noise, other=other).items()}
    nn = {k: M.nn_patch_distance(v, ref, query_stride=3) for k, v in
          dict(shift=shifted, flip=flipped, noise=noise, other=other).items()}
    cov = {k: M.coverage_distance(v, ref, query_stride=3) for k, v in
           dict(shift=shifted, noise=noise, other=other).items()}
    copy = {k: M.copy_rate(v, ref, query_stride=2) for k, v in
            dict(shift=shifted, flip=flipped, noise=noise, other=other).items()}

    # A cyclic shift is the reference cut into four translated pieces.
    assert copy["shift"] > 0.6
    assert nn["shift"] < 0.03  # only the patches straddling the seams are new
    assert cov["shift"] < 0.03
    # Noise and an unrelated photo are far in every sense.
    for far in ("noise", "other"):
        assert swd[far] > 5 * swd["shift"]
        assert nn[far] > 5 * nn["shift"]
        assert cov[far] > 5 * cov["shift"]
        assert copy[far] < 0.05
    assert nn["noise"] > 0.5  # clipped unit Gaussian vs a photo
    # A mirror image has the same kind of patches but is no translated copy.
    assert copy["flip"] < 0.05
    assert swd["flip"] < 0.25 * min(swd["noise"], swd["other"])
    assert nn["flip"] < 0.5 * min(nn["noise"], nn["other"])


def test_copy_rate_of_a_pasted_region_is_its_area():
    ref = _ref()
    sample = _noise((3, 100, 140), seed=5)
    # Paste a 40x50 piece holding a balloon at another position.
    sample[:, 50:90, 70:120] = ref[:, 5:45, 100:150]
    rate = M.copy_rate(sample, ref, query_stride=2)
    assert rate == pytest.approx(40 * 50 / (100 * 140), abs=0.01)
    # Too small a region is not counted.
    assert M.copy_rate(sample, ref, min_region=40 * 50, query_stride=2) == 0.0


def test_copy_rate_ignores_flat_areas_and_handles_grayscale():
    flat = np.full((1, 40, 60), 0.3, np.float32)
    assert M.copy_rate(flat, flat) == 0.0  # nothing textured: nothing to call a copy
    gray = np.ascontiguousarray(_ref()[:1, :64, :96])
    assert M.copy_rate(gray, gray) > 0.95
    assert M.copy_rate(_noise(gray.shape, seed=7), gray) == 0.0


def test_swd_handles_different_sizes_and_is_symmetric():
    ref = _ref()
    other = _other("aurora")
    ab = M.patch_swd(other, ref, seed=3)
    ba = M.patch_swd(ref, other, seed=3)
    assert ab == pytest.approx(ba, rel=1e-6)
    # A half-size crop of the reference is still much closer than another photo.
    crop = np.ascontiguousarray(ref[:, 20:100, 30:160])
    assert M.patch_swd(crop, ref, seed=3) < 0.5 * ab
    # Levels that would be smaller than the patch are skipped, not an error.
    tiny = np.ascontiguousarray(ref[:, :16, :16])
    assert np.isfinite(M.patch_swd(tiny, ref, levels=5))


def test_metrics_are_deterministic():
    ref = _ref()
    smp = np.ascontiguousarray(_other("starry_night")[:, :90, :110])
    assert M.patch_swd(smp, ref, seed=4) == M.patch_swd(smp, ref, seed=4)
    assert M.patch_swd(smp, ref, seed=4) != M.patch_swd(smp, ref, seed=5)
    assert M.nn_patch_distance(smp, ref, query_stride=3) == M.nn_patch_distance(smp, ref, query_stride=3)
    shifted = _shift(ref)
    assert M.copy_rate(shifted, ref, query_stride=2) == M.copy_rate(shifted, ref, query_stride=2)


# --------------------------------------------------------------------------- diversity and evaluate


def test_pixel_diversity_and_pairwise_distance():
    ref = _ref()
    assert M.pixel_diversity([ref, ref.copy(), ref.copy()]) == 0.0
    assert M.pairwise_distance([ref, ref.copy(), ref.copy()]) == 0.0
    noises = [_noise(ref.shape, seed=s) for s in range(4)]
    assert M.pixel_diversity(noises) > 0.2
    lo, hi = np.full((3, 8, 8), -1, np.float32), np.full((3, 8, 8), 1, np.float32)
    assert M.pixel_diversity([lo, hi]) == pytest.approx(0.5)  # std of {0, 1} on the [0, 1] scale
    assert M.pairwise_distance([lo, hi, lo]) == pytest.approx((2 + 0 + 2) / 3)
    with pytest.raises(ValueError):
        M.pixel_diversity([ref, ref[:, :10, :10]])


def test_evaluate_reports_lists_means_and_diversity():
    ref = np.ascontiguousarray(_ref()[:, :64, :96])
    samples = [ref.copy(), _noise(ref.shape, seed=9)]
    out = M.evaluate(ref, samples, seed=1, query_stride=2)
    for key in ("swd", "nn_distance", "coverage", "copy_rate"):
        assert len(out[key]) == 2
        assert out[f"{key}_mean"] == pytest.approx(np.mean(out[key]))
    assert out["n_samples"] == 2
    assert out["swd"][0] < 1e-3 and out["nn_distance"][0] < 1e-4 and out["copy_rate"][0] > 0.95
    assert out["swd"][1] > 0.1 and out["copy_rate"][1] == 0.0
    assert out["swd"][1] == M.patch_swd(samples[1], ref, seed=1)
    assert out["pixel_diversity"] == pytest.approx(M.pixel_diversity(samples))
    assert out["pairwise_distance"] == pytest.approx(M.pairwise_distance(samples))
    single = M.evaluate(ref, ref, query_stride=2)
    assert single["n_samples"] == 1 and "pixel_diversity" not in single
