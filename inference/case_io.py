"""Read and validate one challenge case, and write its prediction atomically.

The npz holds pickled objects (`boxes`, `clicks`, `clicks_order`), so it is read member by member:
plain arrays with `allow_pickle=False`, object arrays through a restricted unpickler that admits only
builtin containers, numbers, strings and numpy arrays/scalars. Arrays are (z, y, x); the stored
`spacing` is (x, y, z); click coordinates are (z, y, x) voxel indices.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_CLASSES = 255
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")


class CaseError(ValueError):
    """A case that cannot be processed; the message names the file and the problem."""


# --------------------------------------------------------------------------- restricted unpickling
def _numpy_attr(module: str, name: str) -> Any:
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    table = {
        ("numpy", "ndarray"): numpy.ndarray,
        ("numpy", "dtype"): numpy.dtype,
        ("multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("multiarray", "scalar"): core.multiarray.scalar,
        ("numeric", "_frombuffer"): core.numeric._frombuffer,  # arrays pickled at protocol 5
    }
    short = module.rsplit(".", 1)[-1]
    if (short, name) in table:
        return table[(short, name)]
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(numpy.dtypes, name)
    raise KeyError(name)


_ALLOWED_BUILTINS = {
    "list": list, "dict": dict, "tuple": tuple, "set": set, "frozenset": frozenset,
    "int": int, "float": float, "complex": complex, "str": str, "bytes": bytes,
    "bytearray": bytearray, "bool": bool, "slice": slice,
}
_ALLOWED_NUMPY_MODULES = {
    "numpy", "numpy.dtypes", "numpy.core.multiarray", "numpy._core.multiarray",
    "numpy.core.numeric", "numpy._core.numeric",
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only containers, numbers, strings and numpy arrays/scalars."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return _ALLOWED_BUILTINS[name]
        if module in ("_codecs", "codecs") and name == "encode":  # numpy scalars pickled at protocol 2
            import codecs

            return codecs.encode
        if module in _ALLOWED_NUMPY_MODULES:
            try:
                return _numpy_attr(module, name)
            except (KeyError, AttributeError):
                pass
        raise pickle.UnpicklingError(f"forbidden pickled object {module}.{name}")


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _read_npy(fp: io.BufferedIOBase) -> np.ndarray:
    """Read one .npy stream; object arrays go through the restricted unpickler."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        arr = RestrictedUnpickler(fp).load()
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr, dtype=object)
        return arr
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data = fp.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError("array data is truncated")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    order = "F" if fortran else "C"
    return arr.reshape(shape, order=order).copy()


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """All members of an npz as a dict, without executing pickled code. Raises CaseError."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fp:
                    out[info.filename[:-4]] = _read_npy(fp)
            return out
    except pickle.UnpicklingError as err:
        raise CaseError(f"{path.name}: rejected pickled content ({err})") from err
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise CaseError(f"{path.name}: not a readable npz (truncated or corrupt: {err})") from err
    except FileNotFoundError as err:
        raise CaseError(f"{path.name}: file not found") from err
    except (ValueError, OSError) as err:
        raise CaseError(f"{path.name}: unreadable npz member ({err})") from err


# --------------------------------------------------------------------------- the case
@dataclass
class Box:
    """The organizer's box: 3D slice range plus the mid-slice 2D box, inclusive voxel indices (z, y, x)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    z_mid: int


@dataclass
class Case:
    """A validated case. `image` (z, y, x); `spacing_xyz` as stored; clicks (N, 3) int arrays of (z, y, x)."""

    name: str
    image: np.ndarray
    spacing_xyz: tuple[float, float, float]
    num_classes: int
    boxes: list[Box] | None
    fg_clicks: list[np.ndarray]
    bg_clicks: list[np.ndarray]
    clicks_order: list[list[str | None]]
    prev_pred: np.ndarray | None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.image.shape)

    def last_click(self, c: int) -> tuple[np.ndarray, str] | None:
        """The most recent click of class index c, as ((z, y, x), 'fg'|'bg'), or None."""
        order = [o for o in self.clicks_order[c] if o in ("fg", "bg")] if c < len(self.clicks_order) else []
        if order:
            kind = order[-1]
            pts = self.fg_clicks[c] if kind == "fg" else self.bg_clicks[c]
            if len(pts):
                return pts[-1], kind
        for kind, pts in (("fg", self.fg_clicks[c]), ("bg", self.bg_clicks[c])):
            if len(pts):
                return pts[-1], kind
        return None


def _as_list(value: Any) -> list:
    if isinstance(value, np.ndarray):
        return [value[()]] if value.ndim == 0 else list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return [value]
    raise TypeError(f"expected a list, got {type(value).__name__}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f"{what} is not a number ({value!r})")
    if float(value) != int(value):
        raise ValueError(f"{what} is not an integer ({value!r})")
    return int(value)


def _parse_box(d: Any, i: int, shape: tuple[int, int, int]) -> Box:
    if not isinstance(d, dict):
        raise ValueError(f"boxes[{i}] is not a dict")
    missing = [k for k in BOX_KEYS if k not in d]
    if missing:
        raise ValueError(f"boxes[{i}] lacks {missing}")
    v = {k: _int(d[k], f"boxes[{i}][{k!r}]") for k in BOX_KEYS}
    lo = (v["z_min"], v["z_mid_y_min"], v["z_mid_x_min"])
    hi = (v["z_max"], v["z_mid_y_max"], v["z_mid_x_max"])
    for axis, name in enumerate("zyx"):
        if lo[axis] > hi[axis]:
            raise ValueError(f"boxes[{i}] is inverted on {name} ({lo[axis]} > {hi[axis]})")
        if lo[axis] < 0 or hi[axis] >= shape[axis]:
            raise ValueError(f"boxes[{i}] {name} range [{lo[axis]}, {hi[axis]}] is outside the image (size {shape[axis]})")
    if not lo[0] <= v["z_mid"] <= hi[0]:
        raise ValueError(f"boxes[{i}] z_mid {v['z_mid']} is outside [z_min, z_max]")
    return Box(lo, hi, v["z_mid"])


def _parse_points(value: Any, what: str, shape: tuple[int, int, int]) -> np.ndarray:
    pts = np.asarray(_as_list(value) if not isinstance(value, np.ndarray) else value, dtype=object)
    if pts.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    try:
        arr = np.array([[_int(c, what) for c in p] for p in pts.reshape(len(pts), -1)], dtype=np.int64)
    except TypeError as err:
        raise ValueError(f"{what} holds a malformed point") from err
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what} points must be [z, y, x] triples")
    bad = (arr < 0) | (arr >= np.asarray(shape))
    if bad.any():
        p = arr[bad.any(axis=1)][0].tolist()
        raise ValueError(f"{what} has a click {p} outside the volume {list(shape)}")
    return arr


def _parse_order(value: Any, k: int) -> list[list[str | None]]:
    rows = _as_list(value)
    if len(rows) != k:
        raise ValueError(f"clicks_order has {len(rows)} rows for {k} classes")
    out = []
    for row in rows:
        entries = []
        for e in _as_list(row) if not isinstance(row, str) else [row]:
            e = e.item() if isinstance(e, np.generic) else e
            if e is None or e in ("None", "", "none"):
                entries.append(None)
            elif e in ("fg", "bg"):
                entries.append(str(e))
            else:
                raise ValueError(f"clicks_order entry {e!r} is not 'fg', 'bg' or None")
        out.append(entries)
    return out


def parse_case(data: dict[str, Any], name: str = "case") -> Case:
    """Validate the arrays and objects of a case (as read from its npz). Raises CaseError."""
    try:
        return _parse(data, name)
    except CaseError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise CaseError(f"{name}: {err}") from err


def _parse(data: dict[str, Any], name: str) -> Case:
    warnings: list[str] = []
    if "imgs" not in data:
        raise ValueError("missing key 'imgs'")
    img = np.asarray(data["imgs"])
    if img.dtype == object or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"'imgs' has unsupported dtype {img.dtype}")
    if img.ndim != 3:
        raise ValueError(f"'imgs' must be a 3D (z, y, x) volume, got shape {img.shape}")
    if img.size == 0:
        raise ValueError(f"'imgs' is empty (shape {img.shape})")
    if img.shape[0] == 1:
        raise ValueError(f"'imgs' is a 2D image (D=1, shape {img.shape}); this model segments 3D volumes")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise ValueError("'imgs' contains NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 255:
        warnings.append(f"'imgs' values span [{lo:g}, {hi:g}], outside the contract's [0, 255]")
    shape = tuple(int(v) for v in img.shape)

    if "spacing" not in data:
        raise ValueError("missing key 'spacing'")
    spacing = np.asarray(data["spacing"], dtype=object).reshape(-1)
    try:
        spacing = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError("'spacing' is not numeric") from err
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise ValueError(f"'spacing' must be 3 positive numbers (x, y, z), got {spacing.tolist()}")

    boxes = None
    if "boxes" in data and data["boxes"] is not None:
        raw = _as_list(data["boxes"])
        boxes = [_parse_box(d, i, shape) for i, d in enumerate(raw)]

    clicks_raw = _as_list(data["clicks"]) if data.get("clicks") is not None else None
    if boxes is not None:
        k = len(boxes)
    elif clicks_raw is not None:
        k = len(clicks_raw)
    else:
        raise ValueError("neither 'boxes' nor 'clicks': no class to segment")
    if k == 0:
        raise ValueError("zero classes (empty 'boxes'/'clicks')")
    if k > MAX_CLASSES:
        raise ValueError(f"{k} classes: at most {MAX_CLASSES} fit the uint8 output")

    fg = [np.zeros((0, 3), np.int64) for _ in range(k)]
    bg = [np.zeros((0, 3), np.int64) for _ in range(k)]
    if clicks_raw is not None:
        if len(clicks_raw) != k:
            raise ValueError(f"'clicks' has {len(clicks_raw)} entries for {k} classes")
        for i, d in enumerate(clicks_raw):
            if not isinstance(d, dict):
                raise ValueError(f"clicks[{i}] is not a dict")
            fg[i] = _parse_points(d.get("fg", []), f"clicks[{i}]['fg']", shape)
            bg[i] = _parse_points(d.get("bg", []), f"clicks[{i}]['bg']", shape)

    order = [[] for _ in range(k)]
    if data.get("clicks_order") is not None:
        order = _parse_order(data["clicks_order"], k)

    prev = None
    if data.get("prev_pred") is not None:
        prev = np.asarray(data["prev_pred"])
        if prev.shape != shape:
            raise ValueError(f"'prev_pred' shape {prev.shape} differs from 'imgs' {shape}")
        if not (np.issubdtype(prev.dtype, np.integer) or prev.dtype == bool):
            if np.issubdtype(prev.dtype, np.floating) and np.isfinite(prev).all() and (prev == np.round(prev)).all():
                warnings.append(f"'prev_pred' is {prev.dtype}; cast to uint8")
            else:
                raise ValueError(f"'prev_pred' has unsupported dtype {prev.dtype}")
        if prev.size and (prev.min() < 0 or prev.max() > k):
            raise ValueError(f"'prev_pred' labels span [{prev.min()}, {prev.max()}], expected 0..{k}")
        prev = prev.astype(np.uint8, copy=False)

    return Case(name, img, tuple(float(v) for v in spacing), k, boxes, fg, bg, order, prev, warnings)


def read_case(path: str | os.PathLike) -> Case:
    """Load and validate a challenge npz. Raises CaseError naming the file."""
    path = Path(path)
    return parse_case(load_npz(path), path.name)


def write_segs(path: str | os.PathLike, segs: np.ndarray) -> None:
    """Write {'segs': uint8} to a temporary name in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, segs=np.ascontiguousarray(segs, dtype=np.uint8))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
