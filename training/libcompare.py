"""`python -m training.libcompare`: samples/s of TorchIO, MONAI and cornucopia for what the data engine needs.

Two jobs at the sizes the training uses, on one thread (as a DataLoader worker runs): spatial augmentation
(random affine + elastic deformation of an 80^3 context, image linear and labels nearest, cropped to 64^3)
and label-to-image synthesis at 64^3 (per-label Gaussian intensities, bias field, gamma, blur or thick
slices, noise). The result chose cornucopia (docs/training-data.md). TorchIO and MONAI are not project
dependencies: install them to compare (`pip install torchio==1.2.1 monai==1.6.1`); a library that is not
installed is reported as such.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch
from scipy import ndimage


def label_map(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k smooth random regions on an n^3 grid (z, y, x)."""
    noise = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 6)
    return np.digitize(noise, np.quantile(noise, np.linspace(0, 1, k + 1)[1:-1])).astype(np.int64)


def rate(fn: Callable[[], object], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def candidates(img80: np.ndarray, lab80: np.ndarray, lab64: np.ndarray) -> dict[str, Callable[[], Callable]]:
    """name -> a builder returning the zero-argument job (builders import their library lazily)."""
    def tio_spatial():
        import torchio as tio
        tr = tio.Compose([tio.RandomAffine(scales=(0.7, 1.3), degrees=15),
                          tio.RandomElasticDeformation(num_control_points=7, max_displacement=4), tio.CropOrPad(64)])
        return lambda: tr(tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(img80)[None]),
                                      label=tio.LabelMap(tensor=torch.from_numpy(lab80)[None])))

    def tio_synth():
        import torchio as tio
        tr = tio.Compose([tio.RandomLabelsToImage(label_key="label", image_key="image"), tio.RandomBiasField(),
                          tio.RandomGamma(), tio.RandomAnisotropy(downsampling=(1, 6)), tio.RandomNoise()])
        return lambda: tr(tio.Subject(label=tio.LabelMap(tensor=torch.from_numpy(lab64)[None])))

    def monai_spatial():
        import monai.transforms as mt
        tr = mt.Rand3DElasticd(["i", "l"], sigma_range=(5, 7), magnitude_range=(50, 150), prob=1.0,
                               rotate_range=(0.26,) * 3, scale_range=(0.3,) * 3, spatial_size=(64,) * 3,
                               mode=("bilinear", "nearest"), padding_mode="zeros")
        return lambda: tr({"i": img80[None], "l": lab80[None]})

    def monai_synth():  # MONAI has no label-to-image transform: the mixture is written out by hand here
        import monai.transforms as mt
        rng = np.random.default_rng(0)
        tr = mt.Compose([mt.RandBiasField(prob=1.0), mt.RandAdjustContrast(prob=1.0),
                         mt.RandSimulateLowResolution(prob=1.0), mt.RandGaussianNoise(prob=1.0)])

        def job():
            mu, sd = rng.uniform(0, 1, lab64.max() + 1), rng.uniform(0, 0.1, lab64.max() + 1)
            return tr((mu[lab64] + sd[lab64] * rng.normal(size=lab64.shape)).astype(np.float32)[None])
        return job

    def cc_spatial():
        import cornucopia as cc
        tr = cc.RandomAffineElasticTransform(dmax=0.05, shape=5, rotations=15, zooms=0.3, patch=64, order=1,
                                             nearest_if_label=True, bound="zeros")
        return lambda: tr(torch.from_numpy(lab80)[None], torch.from_numpy(img80)[None])

    def cc_synth():
        import cornucopia as cc
        tr = cc.SequentialTransform([cc.RandomGaussianMixtureTransform(fwhm=0), cc.RandomMulFieldTransform(order=1),
                                     cc.RandomGammaTransform(), cc.RandomLowResSliceTransform(resolution=(1.5, 6)),
                                     cc.RandomGaussianNoiseTransform()])
        return lambda: tr(torch.from_numpy(lab64)[None])

    def cc_synth_builtin():
        import cornucopia as cc
        tr = cc.SynthFromLabelTransform(patch=(64,) * 3)
        return lambda: tr(torch.from_numpy(lab80.astype(np.int32))[None])

    return {"torchio: affine + elastic": tio_spatial, "torchio: labels to image + bias, gamma, anisotropy, noise": tio_synth,
            "monai: 3D elastic + affine": monai_spatial, "monai: mixture by hand + bias, contrast, low res, noise": monai_synth,
            "cornucopia: affine + elastic (linear)": cc_spatial,
            "cornucopia: mixture + bias, gamma, thick slices, noise (linear)": cc_synth,
            "cornucopia: SynthFromLabelTransform (spatial + synthesis, its defaults)": cc_synth_builtin}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.libcompare", description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10, help="timed runs per job (default 10)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    lab80 = label_map(80, 12, rng)
    img80 = (rng.normal(size=lab80.shape) + lab80).astype(np.float32)
    lab64 = np.ascontiguousarray(lab80[8:72, 8:72, 8:72])
    print("| library: job | samples/s (1 thread) |\n|---|---|")
    for name, build in candidates(img80, lab80, lab64).items():
        try:
            job = build()
            print(f"| {name} | {rate(job, args.n):.1f} |", flush=True)
        except ImportError as err:
            print(f"| {name} | not installed ({err.name}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
