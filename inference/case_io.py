"""Read one challenge case under the input policy (docs/input-policy.md) and write its prediction atomically.

Every input is either answered, possibly with warnings that name the file and the repair, or refused
with a `CaseError` that names the file and the problem. The npz is read member by member: each npy
header first (declared sizes are checked against the memory available before anything is
allocated), then plain arrays in bounded chunks (never more than their header declares), object
arrays through a restricted unpickler that admits only builtin containers, numbers, strings and
numpy arrays/scalars. Arrays are (z, y, x); the stored `spacing` is (x, y, z); click coordinates
are (z, y, x) voxel indices.
"""
from __future__ import annotations

import io
import itertools
import math
import os
import pickle
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_CLASSES = 255
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
KNOWN_KEYS = ("imgs", "spacing", "boxes", "clicks", "clicks_order", "prev_pred")
SILENT_KEYS = ("gts",)  # the organizer's training files carry ground truth: never read, no warning
MAX_MEMBERS = 256
MAX_PICKLE_BYTES = 64 << 20  # a pickled member (boxes, clicks, ...) is a few kB; more is refused unread
MAX_PICKLE_OBJECTS = 1_000_000
MAX_PICKLE_DEPTH = 32
# Working memory per image voxel while a case is segmented: fusion (3 arrays, 9 B), the output and a
# margin. Measured: 9.9 B/voxel peak RSS on 1456x590x556 with 20 classes (README benchmarks).
WORK_BYTES_PER_VOXEL = 12
RESCALE_BYTES_PER_VOXEL = 4  # float32 copy of an image outside [0, 255]
READ_CHUNK = 16 << 20
SLAB_VOXELS = 1 << 24


class CaseError(ValueError):
    """A case that cannot be processed; the message names the file and the problem."""


class Refused(ValueError):
    """A problem found while reading a member, already phrased for the error line."""


def describe(err: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, shortened: error lines stay one line whatever raised."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Unread:
    """Stands for an npz member that was not read (its key is not used)."""

    def __repr__(self) -> str:
        return "<unread member>"


UNREAD = Unread()


# --------------------------------------------------------------------------- memory
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by the cgroup limit (v2 or v1)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limits = []
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            limits.append(max(limit - usage, 0))
    candidates = [v for v in [avail, *limits] if v is not None]
    return min(candidates) if candidates else 8 << 30


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


# --------------------------------------------------------------------------- restricted unpickling
def _no_size_argument(ctor: type) -> Callable[..., Any]:
    """`bytes`/`bytearray` as the unpickler may call them: from data, never from a size."""

    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"forbidden pickled call {ctor.__name__}(<size>)")
        return ctor(*args)

    return build


def _guarded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor, for plain ndarrays no larger than a pickled member may hold."""
    core = getattr(np, "_core", None) or np.core
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"forbidden pickled array type {getattr(subtype, '__name__', subtype)!r}")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError(f"pickled array shape {shape!r} is too large")
    return core.multiarray._reconstruct(subtype, shape, dtype)


def _numpy_attr(module: str, name: str) -> Any:
    core = getattr(np, "_core", None) or np.core
    table = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("multiarray", "_reconstruct"): _guarded_reconstruct,
        ("multiarray", "scalar"): core.multiarray.scalar,
        ("numeric", "_frombuffer"): core.numeric._frombuffer,  # arrays pickled at protocol 5
    }
    short = module.rsplit(".", 1)[-1]
    if (short, name) in table:
        return table[(short, name)]
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(np.dtypes, name)
    raise KeyError(name)


# Only what standard pickles of containers, numbers, strings and numpy objects call: the other builtin
# types are written with opcodes, never called.
_ALLOWED_BUILTINS = {
    "set": set, "frozenset": frozenset, "complex": complex, "slice": slice,
    "bytes": _no_size_argument(bytes), "bytearray": _no_size_argument(bytearray),
}
_ALLOWED_NUMPY_MODULES = {
    "numpy", "numpy.dtypes", "numpy.core.multiarray", "numpy._core.multiarray",
    "numpy.core.numeric", "numpy._core.numeric",
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only containers, numbers, strings and numpy arrays/scalars."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS:
            return _ALLOWED_BUILTINS[name]
        if module in ("_codecs", "codecs") and name == "encode":  # bytes pickled at protocol 2
            import codecs

            return codecs.encode
        if module in _ALLOWED_NUMPY_MODULES:
            try:
                return _numpy_attr(module, name)
            except (KeyError, AttributeError):
                pass
        raise pickle.UnpicklingError(f"forbidden pickled object {module}.{name}")


def check_pickled_graph(obj: Any) -> None:
    """Refuse an unpickled value with too many objects, too deep a nesting or an oversized array."""
    stack = [(obj, 0)]
    for count in itertools.count():
        if not stack:
            return
        if count > MAX_PICKLE_OBJECTS:
            raise pickle.UnpicklingError(f"pickled content holds more than {MAX_PICKLE_OBJECTS:,} objects")
        value, depth = stack.pop()
        if depth > MAX_PICKLE_DEPTH:
            raise pickle.UnpicklingError(f"pickled content is nested deeper than {MAX_PICKLE_DEPTH}")
        if isinstance(value, np.ndarray):
            if value.nbytes > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(f"pickled array of {value.nbytes:,} bytes")
            if value.dtype.hasobject:
                stack.extend((v, depth + 1) for v in value.reshape(-1).tolist())
        elif isinstance(value, dict):
            stack.extend((v, depth + 1) for v in itertools.chain(value.keys(), value.values()))
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in value)


def restricted_loads(data: bytes) -> Any:
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    check_pickled_graph(obj)
    return obj


# --------------------------------------------------------------------------- npz members
@dataclass
class Member:
    """One npy member of an npz: its zip entry and its header (shape (z, y, x) for images)."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...] = ()
    fortran: bool = False
    dtype: np.dtype | None = None
    header_len: int = 0

    @property
    def nbytes(self) -> int:
        """Declared size of the array data (the pickle's size for object arrays)."""
        if self.dtype is None or self.dtype.hasobject:
            return self.info.file_size
        return math.prod(self.shape) * self.dtype.itemsize


def _read_header(fp: io.BufferedIOBase) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported npy format version {version}")
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _scan(zf: zipfile.ZipFile, keys: Iterable[str]) -> dict[str, Member | Unread]:
    """The npy headers of the wanted members (no array data is read); the other members as UNREAD."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise Refused(f"not a case: {len(infos)} zip members (at most {MAX_MEMBERS})")
    wanted = set(keys)
    out: dict[str, Member | Unread] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[:-4]
        if key in out:
            raise Refused(f"member {key!r} appears twice")
        if key not in wanted:
            out[key] = UNREAD
            continue
        m = Member(key, info)
        try:
            with zf.open(info) as fp:
                m.shape, m.fortran, m.dtype = _read_header(fp)
                m.header_len = fp.tell()
        except (zipfile.BadZipFile, zlib.error, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - a garbage header raises anything (TokenError, SyntaxError, ...)
            raise Refused(f"member {key!r} has an unreadable npy header ({describe(err)})") from err
        out[key] = m
    return out


def _check_stored_sizes(members: dict[str, Member | Unread]) -> None:
    """Each member must hold exactly what its header declares: a pickle at most MAX_PICKLE_BYTES."""
    for m in members.values():
        if not isinstance(m, Member):
            continue
        if m.dtype.hasobject:
            if m.info.file_size > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(f"pickled member {m.key!r} is {m.info.file_size:,} bytes "
                                 f"(at most {MAX_PICKLE_BYTES:,})")
            continue
        stored = m.info.file_size - m.header_len
        if stored < m.nbytes:
            raise Refused(f"member {m.key!r} is truncated: {stored:,} of {m.nbytes:,} declared bytes")
        if stored > m.nbytes:
            raise Refused(f"member {m.key!r} holds {stored:,} bytes where its header declares {m.nbytes:,}; "
                             f"refused unread (a deflate bomb?)")


def _check_memory(members: dict[str, Member | Unread], limit: int) -> None:
    """Refuse, before reading, a case whose declared members and working set exceed `limit` bytes."""
    read = [m for m in members.values() if isinstance(m, Member)]
    for m in read:
        if m.nbytes > limit:
            raise MemoryError(f"member {m.key!r} declares {m.nbytes:,} bytes ({m.shape} {m.dtype}), more than "
                              f"the {_gb(limit)} of memory available")
    need = sum(m.nbytes for m in read)
    img = members.get("imgs")
    if isinstance(img, Member) and not img.dtype.hasobject:
        rescaled = img.dtype != np.uint8 and img.dtype != np.bool_  # may lie outside [0, 255]
        per_voxel = WORK_BYTES_PER_VOXEL + (RESCALE_BYTES_PER_VOXEL if rescaled else 0)
        need += math.prod(img.shape) * per_voxel
        if need > limit:
            raise MemoryError(f"'imgs' declares {img.shape} {img.dtype}: segmenting it needs about {_gb(need)}, "
                              f"more than the {_gb(limit)} of memory available")
    if need > limit:
        raise MemoryError(f"the case declares {_gb(need)} of arrays, more than the {_gb(limit)} of memory available")


def _read_member(zf: zipfile.ZipFile, m: Member) -> Any:
    """The member's value: plain arrays read in chunks up to their declared size (the zip CRC is checked)."""
    with zf.open(m.info) as fp:
        _read_header(fp)
        if m.dtype.hasobject:
            try:
                value = RestrictedUnpickler(fp).load()
            except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, MemoryError):
                raise
            except Exception as err:  # noqa: BLE001 - a corrupt pickle raises anything
                raise Refused(f"member {m.key!r} holds unreadable pickled content ({describe(err)})") from err
            check_pickled_graph(value)
            return value
        flat = np.empty(math.prod(m.shape), dtype=m.dtype)
        if m.nbytes:
            view = memoryview(flat.view(np.uint8))
            pos = 0
            while pos < m.nbytes:
                n = fp.readinto(view[pos:pos + READ_CHUNK])
                if not n:
                    raise Refused(f"member {m.key!r} is truncated")
                pos += n
        if fp.read(1):
            raise Refused(f"member {m.key!r} holds more data than its header declares")
    return flat.reshape(m.shape, order="F" if m.fortran else "C")


def _check_regular(path: Path) -> None:
    """Refuse what is not a regular file (a folder, a FIFO that would block, a device) before opening it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as err:
        raise CaseError(f"{path.name}: file not found") from err
    except OSError as err:
        raise CaseError(f"{path.name}: unreadable ({err.strerror or err})") from err
    if not stat.S_ISREG(mode):
        raise CaseError(f"{path.name}: not a regular file")


def _placeholder(m: Member) -> np.ndarray:
    """A read-only zero array of the member's declared shape and dtype that takes no memory (zero strides)."""
    return np.broadcast_to(np.zeros((), m.dtype), m.shape)


def load_npz(path: str | os.PathLike, keys: Iterable[str] = KNOWN_KEYS,
             memory_limit: int | None = None, headers_only: Iterable[str] = ()) -> dict[str, Any]:
    """The members `keys` of an npz (others as UNREAD), without executing pickled code. Raises CaseError.

    `memory_limit` (bytes; default: the memory available now) bounds the declared sizes. Plain arrays
    named in `headers_only` are not read: a zero placeholder of their declared shape stands for them.
    """
    headers_only = set(headers_only)
    path = Path(path)
    name = path.name
    _check_regular(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = _scan(zf, keys)
            _check_memory(members, available_memory() if memory_limit is None else memory_limit)
            _check_stored_sizes(members)
            return {k: (m if not isinstance(m, Member) else _placeholder(m)
                        if k in headers_only and not m.dtype.hasobject else _read_member(zf, m))
                    for k, m in members.items()}
    except pickle.UnpicklingError as err:
        raise CaseError(f"{name}: rejected pickled content ({describe(err)[len('UnpicklingError: '):]})") from err
    except MemoryError as err:
        raise CaseError(f"{name}: too large: {err or 'out of memory while reading'}") from err
    except Refused as err:
        raise CaseError(f"{name}: {err}") from err
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise CaseError(f"{name}: not a readable npz (truncated or corrupt: {describe(err)})") from err
    except Exception as err:  # noqa: BLE001 - whatever a corrupt file raises, the case is refused and named
        raise CaseError(f"{name}: unreadable npz ({describe(err)})") from err


# --------------------------------------------------------------------------- the case
@dataclass
class Box:
    """The organizer's box: 3D slice range plus the mid-slice 2D box, inclusive voxel indices (z, y, x)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    z_mid: int


@dataclass
class Case:
    """A validated case. `image` (z, y, x); `spacing_xyz` as stored; clicks (N, 3) int arrays of (z, y, x).

    `boxes` is None when the case has no boxes, else one entry per class (None where that box was dropped).
    """

    name: str
    image: np.ndarray
    spacing_xyz: tuple[float, float, float]
    num_classes: int
    boxes: list[Box | None] | None
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


def _unwrap(value: Any) -> Any:
    """A 0-d array (object or numeric) or a numpy scalar as its Python value; anything else unchanged."""
    while isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return value.item() if isinstance(value, np.generic) else value


def _as_list(value: Any) -> list | None:
    """A list, tuple or array (first axis) as a list; a single dict as [dict]; None for anything else."""
    value = _unwrap(value)
    if isinstance(value, np.ndarray):
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return [value]
    return None


def _number(value: Any) -> float | None:
    """A finite real number (Python or numpy, 0-d or one-element array); None for anything else."""
    value = _unwrap(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        value = value.reshape(-1)[0].item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _voxel(value: float, rounded: list[bool]) -> int:
    r = int(round(value))
    if r != value:
        rounded[0] = True
    return r


def _parse_box(d: Any, i: int, shape: tuple[int, int, int], warn: Callable[[str], None]) -> Box | None:
    """boxes[i] with inverted corners ordered, coordinates rounded and clipped; None when it cannot be used."""
    d = _unwrap(d)
    if not isinstance(d, dict):
        warn(f"boxes[{i}] is not a dict: dropped")
        return None
    missing = [k for k in BOX_KEYS if k not in d]
    if missing:
        warn(f"boxes[{i}] lacks {missing}: dropped")
        return None
    v = {k: _number(d[k]) for k in BOX_KEYS}
    bad = [k for k, x in v.items() if x is None]
    if bad:
        warn(f"boxes[{i}] has non-numeric or non-finite {bad}: dropped")
        return None
    rounded = [False]
    lo = [_voxel(v[k], rounded) for k in ("z_min", "z_mid_y_min", "z_mid_x_min")]
    hi = [_voxel(v[k], rounded) for k in ("z_max", "z_mid_y_max", "z_mid_x_max")]
    z_mid = _voxel(v["z_mid"], rounded)
    if rounded[0]:
        warn(f"boxes[{i}] has non-integer coordinates: rounded")
    for axis, name in enumerate("zyx"):
        if lo[axis] > hi[axis]:
            warn(f"boxes[{i}] is inverted on {name} ({lo[axis]} > {hi[axis]}): corners swapped")
            lo[axis], hi[axis] = hi[axis], lo[axis]
    for axis, name in enumerate("zyx"):
        n = shape[axis]
        if hi[axis] < 0 or lo[axis] >= n:
            warn(f"boxes[{i}] {name} range [{lo[axis]}, {hi[axis]}] lies outside the image (size {n}): dropped")
            return None
        if lo[axis] < 0 or hi[axis] >= n:
            warn(f"boxes[{i}] {name} range [{lo[axis]}, {hi[axis]}] exceeds the image (size {n}): clipped")
            lo[axis], hi[axis] = max(lo[axis], 0), min(hi[axis], n - 1)
    if not lo[0] <= z_mid <= hi[0]:
        clamped = min(max(z_mid, lo[0]), hi[0])
        warn(f"boxes[{i}] z_mid {z_mid} is outside [z_min, z_max] = [{lo[0]}, {hi[0]}]: set to {clamped}")
        z_mid = clamped
    return Box(tuple(lo), tuple(hi), z_mid)


def _parse_points(value: Any, what: str, shape: tuple[int, int, int], warn: Callable[[str], None]) -> np.ndarray:
    """(N, 3) int64 clicks (z, y, x) inside the volume; malformed and outside clicks are dropped."""
    value = _unwrap(value)
    if value is None:
        return np.zeros((0, 3), np.int64)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        if value.ndim == 1 and value.size == 3:
            warn(f"{what} is a flat [z, y, x]: read as one click")
            value = value.reshape(1, 3)
        items = list(value.reshape(len(value), -1)) if value.ndim >= 1 and value.size else []
    else:
        items = _as_list(value)
        if items is None:
            warn(f"{what} is not a list of clicks: ignored")
            return np.zeros((0, 3), np.int64)
        if len(items) == 3 and all(_number(e) is not None for e in items):
            warn(f"{what} is a flat [z, y, x]: read as one click")
            items = [items]
    pts, malformed, rounded = [], 0, [False]
    for p in items:
        coords = _as_list(p)
        nums = [_number(c) for c in coords] if coords is not None and len(coords) == 3 else None
        if nums is None or any(c is None for c in nums):
            malformed += 1
            continue
        pts.append([_voxel(c, rounded) for c in nums])
    if malformed:
        warn(f"{what} has {malformed} click(s) that are not three finite numbers: dropped")
    if rounded[0]:
        warn(f"{what} has non-integer coordinates: rounded")
    arr = np.array(pts, dtype=np.int64).reshape(-1, 3)
    outside = ((arr < 0) | (arr >= np.asarray(shape))).any(axis=1)
    if outside.any():
        warn(f"{what} has {int(outside.sum())} click(s) outside the volume {list(shape)} "
             f"(first {arr[outside][0].tolist()}): dropped")
        arr = arr[~outside]
    return arr


def _order_entry(e: Any) -> str | None:
    e = _unwrap(e)
    if isinstance(e, bytes):
        e = e.decode("latin1")
    if e is None or (isinstance(e, float) and math.isnan(e)) or e in ("None", "none", ""):
        return None
    if e in ("fg", "bg"):
        return str(e)
    raise ValueError(f"entry {e!r} is not 'fg', 'bg' or None")


def _parse_order(value: Any, k: int) -> list[list[str | None]]:
    """clicks_order in any form np.savez gives it ((k, n) str/object arrays, (k, 0) floats, lists)."""
    rows = _as_list(value)
    if rows is None:
        raise ValueError(f"is a {type(_unwrap(value)).__name__}, not a list")
    if k == 1 and rows and all(isinstance(_unwrap(r), (str, bytes)) or _unwrap(r) is None for r in rows):
        rows = [rows]  # one class given as a flat list
    if len(rows) != k:
        raise ValueError(f"has {len(rows)} rows for {k} classes")
    out = []
    for row in rows:
        row = _unwrap(row)
        entries = [row] if isinstance(row, (str, bytes)) or row is None else _as_list(row)
        if entries is None:
            raise ValueError(f"row {row!r} is not a list")
        out.append([_order_entry(e) for e in entries])
    return out


def _parse_image(value: Any, warn: Callable[[str], None]) -> np.ndarray:
    if value is None or isinstance(value, Unread):
        raise ValueError("missing key 'imgs'")
    img = _unwrap(value)
    if not isinstance(img, np.ndarray):
        try:
            img = np.asarray(img)
        except Exception as err:  # noqa: BLE001 - ragged or exotic in-memory input
            raise ValueError(f"'imgs' is not an array ({type(err).__name__})") from err
    if img.dtype == bool:
        warn("'imgs' is boolean: cast to uint8")
        img = img.astype(np.uint8)
    if img.dtype.kind not in "iuf":
        raise ValueError(f"'imgs' has unsupported dtype {img.dtype}")
    if img.ndim != 3:
        raise ValueError(f"'imgs' must be a 3D (z, y, x) volume, got shape {img.shape}")
    if img.size == 0:
        raise ValueError(f"'imgs' is empty (shape {img.shape})")
    if img.dtype.kind == "f" and not _all_finite(img):
        raise ValueError("'imgs' contains NaN or infinite values")
    if min(img.shape) < 3:
        warn(f"'imgs' has shape {img.shape}: segmented as a thin 3D volume")
    lo, hi = img.min().item(), img.max().item()
    if lo < 0 or hi > 255:
        warn(f"'imgs' values span [{lo:g}, {hi:g}], outside the contract's [0, 255]: rescaled linearly to [0, 255]")
        img = _rescale(img, lo, hi)
    return img


def _slabs(shape: tuple[int, ...]) -> Iterable[slice]:
    step = max(1, SLAB_VOXELS // max(1, math.prod(shape[1:])))
    return (slice(z, z + step) for z in range(0, shape[0], step))


def _all_finite(img: np.ndarray) -> bool:
    return all(np.isfinite(img[s]).all() for s in _slabs(img.shape))


def _rescale(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 copy of the image mapped linearly from [lo, hi] onto [0, 255], slab by slab."""
    out = np.empty(img.shape, np.float32)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    for s in _slabs(img.shape):
        out[s] = (img[s].astype(np.float64) - lo) * scale
    return out


def _parse_spacing(value: Any, warn: Callable[[str], None]) -> tuple[float, float, float]:
    """Three positive numbers (x, y, z) from an array, list, tuple or 0-d object; else 1 mm with a warning."""
    if value is None or isinstance(value, Unread):
        warn("no 'spacing': 1 mm isotropic assumed (the spacing does not change the prediction)")
        return (1.0, 1.0, 1.0)
    items = _as_list(value)
    if items is not None and len(items) == 1 and _as_list(items[0]) is not None:
        items = _as_list(items[0])  # [[x, y, z]]
    nums = [_number(v) for v in items] if items is not None else None
    if nums is None or len(nums) != 3 or any(v is None or v <= 0 for v in nums):
        shown = repr(_unwrap(value))[:60]
        warn(f"'spacing' {shown} is not 3 positive numbers (x, y, z): 1 mm isotropic assumed "
             f"(the spacing does not change the prediction)")
        return (1.0, 1.0, 1.0)
    return tuple(nums)


def _parse_prev(value: Any, shape: tuple[int, int, int], k: int, warn: Callable[[str], None]) -> np.ndarray | None:
    """The previous prediction as uint8 labels 0..k; unusable ones are ignored, absent labels set to 0."""
    prev = _unwrap(value)
    if prev is None or isinstance(prev, Unread):
        return None
    if not isinstance(prev, np.ndarray):
        warn(f"'prev_pred' is a {type(prev).__name__}, not an array: ignored")
        return None
    if prev.shape != shape:
        warn(f"'prev_pred' shape {prev.shape} differs from 'imgs' {shape}: ignored")
        return None
    if prev.dtype.kind not in "biuf":
        warn(f"'prev_pred' has unsupported dtype {prev.dtype}: ignored")
        return None
    if prev.dtype.kind == "f":
        if not all((np.isfinite(prev[s]) & (prev[s] == np.round(prev[s]))).all() for s in _slabs(shape)):
            warn("'prev_pred' holds non-integer or non-finite values: ignored")
            return None
        warn(f"'prev_pred' is {prev.dtype}: cast to uint8")
    if prev.size and (prev.min() < 0 or prev.max() > k):
        absent = (prev < 0) | (prev > k)
        warn(f"'prev_pred' holds {int(absent.sum())} voxel(s) with labels outside 0..{k} "
             f"(span [{prev.min():g}, {prev.max():g}]): set to 0")
        prev = np.where(absent, 0, prev)
    return prev.astype(np.uint8, copy=False)


def class_count(data: dict[str, Any]) -> int:
    """The number of classes: the longer of the 'boxes' and 'clicks' lists (0 when neither is a list)."""
    lengths = [len(v) for v in (_as_list(data.get("boxes")), _as_list(data.get("clicks"))) if v is not None]
    return max(lengths, default=0)


def parse_case(data: dict[str, Any], name: str = "case") -> Case:
    """Validate and repair the arrays and objects of a case (as read from its npz). Raises CaseError."""
    try:
        return _parse(data, name)
    except CaseError:
        raise
    except (ValueError, TypeError) as err:
        raise CaseError(f"{name}: {str(err).splitlines()[0] if str(err) else describe(err)}") from err
    except Exception as err:  # noqa: BLE001 - whatever malformed content raises, the case is refused and named
        raise CaseError(f"{name}: {describe(err)}") from err


def _parse(data: dict[str, Any], name: str) -> Case:
    warnings: list[str] = []
    warn = warnings.append
    img = _parse_image(data.get("imgs"), warn)
    shape = tuple(int(v) for v in img.shape)
    spacing = _parse_spacing(data.get("spacing"), warn)
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS and k not in SILENT_KEYS)
    if unknown:
        warn(f"ignored unknown key(s) {unknown}")

    raw_boxes, raw_clicks = _as_list(data.get("boxes")), _as_list(data.get("clicks"))
    for key, raw in (("boxes", raw_boxes), ("clicks", raw_clicks)):
        value = _unwrap(data.get(key))
        if raw is None and value is not None and not isinstance(value, Unread):
            warn(f"'{key}' is a {type(value).__name__}, not a list: ignored")
    if raw_boxes is None and raw_clicks is None:
        raise ValueError("neither 'boxes' nor 'clicks' is a list: no class to segment")
    k = class_count({"boxes": raw_boxes, "clicks": raw_clicks})
    if k == 0:
        raise ValueError("zero classes (empty 'boxes' and 'clicks')")
    if k > MAX_CLASSES:
        raise ValueError(f"{k} classes: at most {MAX_CLASSES} fit the uint8 output")
    if raw_boxes is not None and raw_clicks is not None and len(raw_boxes) != len(raw_clicks):
        warn(f"'boxes' has {len(raw_boxes)} entries and 'clicks' {len(raw_clicks)}: {k} classes, "
             f"the missing prompts taken as absent")

    dropped = [False] * k
    boxes = None
    if raw_boxes is not None:
        boxes = []
        for i in range(k):
            box = _parse_box(raw_boxes[i], i, shape, warn) if i < len(raw_boxes) else None
            dropped[i] |= box is None and i < len(raw_boxes)
            boxes.append(box)

    fg = [np.zeros((0, 3), np.int64) for _ in range(k)]
    bg = [np.zeros((0, 3), np.int64) for _ in range(k)]
    for i, entry in enumerate((raw_clicks or [])[:k]):
        entry = _unwrap(entry)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            warn(f"clicks[{i}] is a {type(entry).__name__}, not a dict: no clicks for class {i + 1}")
            dropped[i] = True
            continue
        n_warn = len(warnings)
        fg[i] = _parse_points(entry.get("fg"), f"clicks[{i}]['fg']", shape, warn)
        bg[i] = _parse_points(entry.get("bg"), f"clicks[{i}]['bg']", shape, warn)
        dropped[i] |= len(warnings) > n_warn

    order: list[list[str | None]] = [[] for _ in range(k)]
    raw_order = data.get("clicks_order")
    if raw_order is not None and not isinstance(raw_order, Unread):
        try:
            order = _parse_order(raw_order, k)
        except (ValueError, TypeError) as err:
            warn(f"'clicks_order' {err}: ignored (it does not change the prediction)")

    prev = _parse_prev(data.get("prev_pred"), shape, k, warn)
    prompted = [(boxes is not None and boxes[c] is not None) or len(fg[c]) + len(bg[c]) > 0 for c in range(k)]
    if not any(prompted) and prev is None:
        raise ValueError("no class has a usable prompt (every box and click was dropped) and there is no 'prev_pred'")
    for c in range(k):
        if dropped[c] and not prompted[c]:
            left = "keeps its previous mask" if prev is not None else "is left empty"
            warn(f"class {c + 1} has no usable prompt left: it {left}")
    return Case(name, img, spacing, k, boxes, fg, bg, order, prev, warnings)


def read_case(path: str | os.PathLike, memory_limit: int | None = None, image_data: bool = True) -> Case:
    """Load and validate a challenge npz under the input policy. Raises CaseError naming the file.

    With `image_data=False` the image is a zero placeholder of its shape (no voxel is read): enough for a
    fallback prediction of a case already validated.
    """
    path = Path(path)
    data = load_npz(path, memory_limit=memory_limit, headers_only=() if image_data else ("imgs",))
    return parse_case(data, path.name)


def peek_case(path: str | os.PathLike) -> tuple[int, int] | None:
    """(class count, image voxels) from the small members and the 'imgs' header only; None when unreadable."""
    path = Path(path)
    try:
        _check_regular(path)
        with zipfile.ZipFile(path) as zf:
            members = _scan(zf, ("imgs", "boxes", "clicks"))
            _check_stored_sizes({k: m for k, m in members.items() if k != "imgs"})
            small = {k: _read_member(zf, m) for k, m in members.items()
                     if k in ("boxes", "clicks") and isinstance(m, Member)}
            img = members.get("imgs")
            return class_count(small), (math.prod(img.shape) if isinstance(img, Member) else 0)
    except Exception:  # noqa: BLE001 - an unreadable case has no count
        return None


# --------------------------------------------------------------------------- output
_tmp_counter = itertools.count()


def temp_name(pid: int | None = None) -> str:
    """A short hidden name for a partial output, whatever the case's name: `.segfm-<pid>-<n>.tmp`."""
    return f".segfm-{os.getpid() if pid is None else pid}-{next(_tmp_counter)}.tmp"


def write_segs(path: str | os.PathLike, segs: np.ndarray, compress: bool = True) -> None:
    """Write {'segs': uint8} to a short temporary name in the same folder, then rename it over `path`.

    `compress=False` writes a stored (uncompressed) npz, several times faster for big volumes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name())
    save = np.savez_compressed if compress else np.savez
    try:
        with open(tmp, "wb") as fh:
            save(fh, segs=np.ascontiguousarray(segs, dtype=np.uint8))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partial_outputs(folder: str | os.PathLike, pid: int) -> None:
    """Delete the partial outputs a (killed) process `pid` left in `folder`."""
    for p in Path(folder).glob(f".segfm-{pid}-*.tmp"):
        p.unlink(missing_ok=True)
