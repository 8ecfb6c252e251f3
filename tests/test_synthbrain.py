"""The T1-like tuning brain painted from a label map (evaluation/synthbrain.py)."""
import numpy as np

from evaluation.synthbrain import brain_labels, paint_t1

NAMES = {"1": "left cerebral white matter", "2": "left cerebral cortex", "3": "CSF", "4": "left lesion",
         "5": "extra-cerebral soft tissues (label_507)", "6": "label_136 (left of pair 136/137)"}


def _labels():
    labels = np.full((20, 24, 24), 5, np.uint8)  # extra-cerebral all around
    labels[4:16, 4:20, 4:20] = 2
    labels[6:14, 7:17, 7:17] = 1
    labels[9:11, 11:13, 11:13] = 4
    labels[5, 5:8, 5:8] = 3
    return labels


def test_only_brain_structures_are_kept_and_painted_by_tissue():
    assert brain_labels(NAMES) == [1, 2, 3]
    image, gts, names = paint_t1(_labels(), NAMES)
    assert image.shape == gts.shape == (12, 16, 16)  # cropped to the brain
    assert names == {"1": "left cerebral white matter", "2": "left cerebral cortex", "3": "CSF"}
    assert set(np.unique(gts)) == {0, 1, 2, 3}  # the lesion is outside every kept structure
    assert image[gts == 1].mean() > image[gts == 2].mean() > image[gts == 3].mean()


def test_painting_repeats_from_its_seed():
    a, b, c = paint_t1(_labels(), NAMES, seed=3), paint_t1(_labels(), NAMES, seed=3), paint_t1(_labels(), NAMES, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[0], c[0])
