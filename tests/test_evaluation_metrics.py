"""Known-answer tests of DSC, NSD (surface distance) and AUC (evaluation.metrics, surfels)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from evaluation.metrics import (
    auc,
    dice,
    normalized_surface_dice,
    nsd_spacing,
    step_metrics,
    surface_dice_cropped,
)
from evaluation.surfels import neighbour_codes, surface_area_lut

R2, R3 = math.sqrt(2), math.sqrt(3)


def cube(n, margin=3, shift=(0, 0, 0)):
    size = n + 2 * margin
    mask = np.zeros((size, size, size), dtype=bool)
    mask[margin:margin + n, margin:margin + n, margin:margin + n] = True
    return np.roll(mask, shift, axis=(0, 1, 2))


def sphere(radius, pad=2):
    r = np.arange(-radius - pad, radius + pad + 1)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return z * z + y * y + x * x <= radius * radius


# --------------------------------------------------------------------------------------------- DSC
def test_dice_known_values():
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[0:4] = True
    b[1:7] = True
    assert dice(a, b) == pytest.approx(2 * 3 / 10)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros(10, bool)) == 0.0
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


# ------------------------------------------------------------------------------------ surfel areas
def test_surfel_area_table_known_codes():
    lut = surface_area_lut((1.0, 1.0, 1.0))
    assert lut[0] == 0 and lut[255] == 0
    assert lut[1] == pytest.approx(R3 / 8)  # one corner: a triangle
    assert lut[3] == pytest.approx(R2 / 2)  # one edge: a diagonal quad
    assert lut[15] == pytest.approx(1.0)  # half the cell: a full square
    assert lut[0b01101001] == pytest.approx(4 * R3 / 8)  # 4 isolated corners
    assert np.allclose(lut, lut[::-1])  # a code and its complement share the surface
    s = (2.0, 3.0, 5.0)
    lut = surface_area_lut(s)
    assert lut[15] == pytest.approx(3.0 * 5.0)  # corners with d0 = 1: face normal to axis 0
    assert lut[0b00110011] == pytest.approx(2.0 * 5.0)  # corners with d1 = 1: normal to axis 1
    assert lut[0b01010101] == pytest.approx(2.0 * 3.0)  # corners with d2 = 1: normal to axis 2


def test_neighbour_codes_of_one_voxel():
    codes = neighbour_codes(np.ones((1, 1, 1), bool))
    assert codes.shape == (2, 2, 2)
    # cell i covers voxels i-1..i: the voxel is corner (1,1,1) of cell 0 (bit 1), (0,0,0) of cell 1
    assert codes[0, 0, 0] == 1 and codes[1, 1, 1] == 128
    assert sorted(codes.ravel().tolist()) == [1, 2, 4, 8, 16, 32, 64, 128]


def test_sphere_surface_area_close_to_4_pi_r2():
    mask = sphere(15)
    codes = neighbour_codes(mask)
    area = surface_area_lut((1.0, 1.0, 1.0))[codes].sum()
    # marching cubes through edge mid-points of a binary sphere overestimates its area by ~9 %
    assert 1.0 < area / (4 * math.pi * 15**2) < 1.12


# --------------------------------------------------------------------------------------------- NSD
def test_nsd_identical_masks_is_one():
    s = sphere(6)
    assert normalized_surface_dice(s, s, (1.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_dice(s, s, (0.5, 0.7, 3.0), tolerance_mm=0.0) == 1.0


def test_nsd_empty_or_far_prediction_is_zero():
    gt = cube(4, margin=8)
    assert normalized_surface_dice(np.zeros_like(gt), gt, (1, 1, 1)) == 0.0
    far = np.roll(gt, 8, axis=2)
    assert normalized_surface_dice(far, gt, (1, 1, 1)) == 0.0
    assert math.isnan(normalized_surface_dice(np.zeros_like(gt), np.zeros_like(gt), (1, 1, 1)))


def shifted_cube_nsd_unit(n):
    """Cube n^3 vs the same shifted by one voxel along axis 0, unit spacing, tolerance < 1.

    Only border cells that coincide count: the lateral cells of layers 1..n-1 (faces, area 1,
    and vertical edges, area sqrt2/2) and the ring of layer n (top edges sqrt2/2, corners
    sqrt3/8); both masks are mirror images, so NSD = overlap / area of one surface.
    """
    overlap = (n - 1) * (4 * (n - 1) + 4 * R2 / 2) + 4 * (n - 1) * R2 / 2 + 4 * R3 / 8
    total = 6 * (n - 1) ** 2 + 12 * (n - 1) * R2 / 2 + 8 * R3 / 8
    return overlap / total


@pytest.mark.parametrize("n", [3, 4, 6])
def test_nsd_cube_shifted_by_one_voxel(n):
    gt = cube(n)
    pred = cube(n, shift=(1, 0, 0))
    assert normalized_surface_dice(pred, gt, (1, 1, 1), tolerance_mm=0.5) == pytest.approx(shifted_cube_nsd_unit(n), abs=1e-12)
    assert normalized_surface_dice(pred, gt, (1, 1, 1), tolerance_mm=0.999) == pytest.approx(shifted_cube_nsd_unit(n), abs=1e-12)
    assert normalized_surface_dice(pred, gt, (1, 1, 1), tolerance_mm=1.0) == 1.0
    assert normalized_surface_dice(pred, gt, (1, 1, 1), tolerance_mm=2.0) == 1.0


def shifted_cube_nsd_thick_slices(n):
    """Same shift with spacing (3, 1, 1) per axis and tolerance 2 mm: the 3 mm shift is out of
    tolerance, but top-face cells within 2 in-plane voxels of the other cube's ring count."""
    face0, face12 = 1.0, 3.0  # face areas normal to axis 0 / to axes 1, 2
    edge0 = 3 * R2 / 2  # edges along axis 0
    edge12 = 1 * math.sqrt(1 + 9) / 2  # edges along axes 1, 2
    corner = math.sqrt(1 + 9 + 9) / 8
    total = 2 * (n - 1) ** 2 * face0 + 4 * (n - 1) ** 2 * face12 + 4 * (n - 1) * edge0 + 8 * (n - 1) * edge12 + 8 * corner
    near_top = (n - 1) ** 2 - max(n - 5, 0) ** 2  # top-face cells within 2 voxels of the ring
    overlap = (n - 1) * (4 * (n - 1) * face12 + 4 * edge0) + 4 * (n - 1) * edge12 + 4 * corner + near_top * face0
    return overlap / total


@pytest.mark.parametrize("n", [4, 6, 8])
def test_nsd_spacing_conventions_on_shifted_cube(n):
    gt = cube(n)
    pred = cube(n, shift=(1, 0, 0))
    stored_xyz = (1.0, 1.0, 3.0)  # x, y in-plane 1 mm, slices 3 mm apart
    # organizer: the stored spacing per array axis -> axis 0 (z) gets 1 mm: within 2 mm
    assert nsd_spacing(stored_xyz) == (1.0, 1.0, 3.0)
    assert normalized_surface_dice(pred, gt, nsd_spacing(stored_xyz)) == 1.0
    # physical: axis 0 gets 3 mm: the shift is outside the tolerance
    assert nsd_spacing(stored_xyz, physical=True) == (3.0, 1.0, 1.0)
    value = normalized_surface_dice(pred, gt, nsd_spacing(stored_xyz, physical=True))
    assert value == pytest.approx(shifted_cube_nsd_thick_slices(n), abs=1e-12)


def test_ball_search_and_edt_agree():
    rng = np.random.default_rng(5)
    for trial in range(12):
        shape = tuple(int(v) for v in rng.integers(6, 20, 3))
        gt = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
        pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
        if not gt.any():
            continue
        spacing = tuple(float(v) for v in rng.choice([0.4, 0.703125, 1.0, 2.5, 3.0], 3))
        tol = float(rng.choice([0.5, 1.0, 2.0]))
        a = surface_dice_cropped(gt, pred, spacing, tol, method="ball")
        b = surface_dice_cropped(gt, pred, spacing, tol, method="edt")
        assert a == pytest.approx(b, abs=1e-12), trial


# --------------------------------------------------------------------------------------------- AUC
def test_auc_trapezoid_over_click_steps():
    v = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]  # DSC_1 (box) does not count
    assert auc(v) == pytest.approx(0.5 * 0.1 + 0.2 + 0.3 + 0.4 + 0.5 * 0.5)
    assert auc(v[1:]) == auc(v)
    assert auc([1.0] * 6) == pytest.approx(4.0)
    assert auc([0, 0.5, 1, 1, 1, 0]) == pytest.approx(3.25)
    assert auc([0.7]) == 0.0


# ------------------------------------------------------------------------------ multi-class step
def test_step_metrics_mean_over_classes_and_nsd_gate():
    gts = np.zeros((6, 20, 20), dtype=np.uint8)
    gts[1:5, 2:8, 2:8] = 1
    gts[1:5, 10:18, 10:18] = 2
    segs = np.zeros_like(gts)
    segs[gts == 1] = 1
    m = step_metrics(gts, segs, (1.0, 1.0, 1.0))
    assert m.dsc_per_class == [1.0, 0.0] and m.dsc == 0.5
    assert m.nsd_per_class == [1.0, 0.0] and m.nsd == 0.5
    # case DSC <= 0.2: NSD is not computed and is 0
    segs[:] = 0
    segs[1:5, 2:3, 2:8] = 1
    m = step_metrics(gts, segs, (1.0, 1.0, 1.0))
    assert m.dsc == pytest.approx((2 * 24 / (24 + 144) + 0) / 2) and m.dsc < 0.2
    assert m.nsd == 0.0 and m.nsd_per_class is None


def test_step_metrics_compares_raw_output_values():
    gts = np.zeros((4, 8, 8), dtype=np.uint8)
    gts[1:3, 1:5, 1:5] = 1
    as_float = gts.astype(np.float32)  # 1.0 == 1
    assert step_metrics(gts, as_float, (1, 1, 1)).dsc == 1.0
    odd = as_float.copy()
    odd[odd == 1] = 1.5  # equals no class
    assert step_metrics(gts, odd, (1, 1, 1)).dsc == 0.0
    wide = gts.astype(np.int32)
    wide[0, 0, 0] = 257  # must not wrap onto class 1
    assert step_metrics(gts, wide, (1, 1, 1)).dsc == 1.0
    with pytest.raises(ValueError):
        step_metrics(gts, gts[:, :4], (1, 1, 1))
