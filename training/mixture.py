"""The training data sources and their sampling mixture.

Each source hands `training.data.render_sample` a volume (`CaseData`) and the label of one object in it:

| source       | volume                                                   | image                      |
|--------------|----------------------------------------------------------|----------------------------|
| `real`       | a training case (image + manual/automatic labels)       | the real image             |
| `synth`      | a training case or a label map without image             | painted from the labels    |
| `pseudo`     | a training or image-only volume with supervoxel labels   | the real image             |
| `ensemble`   | real object masks rearranged in an empty canvas          | painted from the labels    |
| `procedural` | random blobs, tubes and plates in an empty canvas        | painted from the labels    |

The mixture (weights per source) lives in `TrainConfig` and therefore in every checkpoint. Sources without
data (no label maps, no pseudo-label cache) are left out and the remaining weights renormalised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .data import CaseData, CaseStore, prepare_case
from .shapes import ensemble, fit_mask, procedural

SOURCE_NAMES = ("real", "synth", "pseudo", "ensemble", "procedural")
Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Mixture:
    """Sampling weights per source (need not sum to 1)."""

    real: float = 1.0
    synth: float = 0.0
    pseudo: float = 0.0
    ensemble: float = 0.0
    procedural: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> "Mixture":
        return cls(**{name: float(getattr(cfg, f"mix_{name}")) for name in SOURCE_NAMES})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Drawn:
    """What a source hands over: a volume, the object's label, whether to paint it, its first click if known."""

    case: CaseData
    label: int
    paint: bool
    source: int
    click: Triple | None = None


def _pick_case(store: CaseStore, rng: np.random.Generator) -> tuple[int, CaseData, int]:
    """A case (by `CaseStore.case_weights`) and one of its labels (`CaseStore.draw_label`: uniformly unless the
    store has difficulty weights)."""
    i = int(rng.choice(len(store), p=store.case_weights()))
    case = store.get(i)
    if len(case.labels) == 0:
        raise ValueError(f"{store.paths[i]}: no labelled class")
    return i, case, store.draw_label(i, case, rng)


@dataclass
class Sources:
    """The stores behind each source and the mixture; `draw` picks a source, a volume and an object."""

    real: CaseStore | None
    labelmaps: CaseStore | None = None      # label maps with or without images (synth, ensembles)
    pseudo: CaseStore | None = None
    mixture: Mixture = Mixture()
    canvas: Triple = (96, 96, 96)

    def __post_init__(self) -> None:
        available = {"real": self.real is not None, "synth": self.labelmaps is not None,
                     "pseudo": self.pseudo is not None, "ensemble": self.labelmaps is not None,
                     "procedural": True}
        w = np.array([getattr(self.mixture, n) if available[n] else 0.0 for n in SOURCE_NAMES], float)
        if w.sum() <= 0:
            raise ValueError(f"no training source has data and a positive weight (mixture {self.mixture})")
        self.weights = w / w.sum()

    def draw(self, rng: np.random.Generator) -> Drawn:
        k = int(rng.choice(len(SOURCE_NAMES), p=self.weights))
        name = SOURCE_NAMES[k]
        if name == "real":
            i, case, label = _pick_case(self.real, rng)
            return Drawn(case, label, False, k, self.real.first_click(i, label))
        if name == "synth":
            i, case, label = _pick_case(self.labelmaps, rng)
            return Drawn(case, label, True, k, self.labelmaps.first_click(i, label))
        if name == "pseudo":
            i, case, label = _pick_case(self.pseudo, rng)
            return Drawn(case, label, False, k, self.pseudo.first_click(i, label))
        if name == "ensemble":
            labels = ensemble(self.canvas, self.bank_masks(rng), rng)
        else:
            labels = procedural(self.canvas, rng)
        case = prepare_case(f"{name}.npz", None, labels)
        if len(case.labels) == 0:  # every object covered by later ones: draw again
            return self.draw(rng)
        return Drawn(case, int(case.labels[rng.integers(len(case.labels))]), True, k)

    def bank_masks(self, rng: np.random.Generator, count: tuple[int, int] = (3, 9)) -> list[np.ndarray]:
        """Random real object masks (bool, z, y, x) from the label maps, each shrunk to fit a canvas half."""
        masks = []
        for _ in range(int(rng.integers(*count))):
            _, case, label = _pick_case(self.labelmaps, rng)
            box = case.box_of(label)
            mask = np.asarray(case.gts[box]) == label
            masks.append(fit_mask(mask, int(rng.integers(12, max(self.canvas) // 2 + 1))))
        return masks


def as_sources(obj: Any) -> Sources:
    """A `Sources` as it is, or a bare CaseStore wrapped as the real-images-only source."""
    if isinstance(obj, Sources):
        return obj
    if isinstance(obj, CaseStore):
        return Sources(obj)
    raise TypeError(f"expected Sources or CaseStore, got {type(obj).__name__}")


def store_or_none(paths: Sequence, **kw) -> CaseStore | None:
    return CaseStore(paths, **kw) if paths else None
