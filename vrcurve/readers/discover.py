"""Turn ``--data PATH`` (a file, a folder or a glob) into a format and a sorted list of files."""

from __future__ import annotations

import fnmatch
import glob as _glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import VRCurveError
from .base import natural_key

# File suffix -> format. A folder or glob must hold files of one format only.
FORMATS: Dict[str, str] = {
    ".npy": "npy", ".npz": "npz", ".safetensors": "safetensors",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".png": "images", ".jpg": "images", ".jpeg": "images", ".webp": "images",
}
_GLOB_CHARS = "*?["


def suffixes_of(fmt: str) -> List[str]:
    return [s for s, f in FORMATS.items() if f == fmt]


def _all_suffixes() -> str:
    return ", ".join(FORMATS)


@dataclass(frozen=True)
class Found:
    """What PATH names.

    Attributes:
        fmt: one of the values of FORMATS.
        files: the files, sorted by path with digit runs compared by value (``2.npy`` before ``10.npy``).
        single: PATH named one file directly (rather than a folder or glob that matched files).
    """

    fmt: str
    files: Tuple[Path, ...]
    single: bool


def _walk(root: Path) -> List[Path]:
    """Every file below ``root``, skipping hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``).

    ``os.walk`` lists a folder with one ``scandir`` (no ``stat`` per file), which matters for folders of a
    million per-sample files. Symbolic links to folders are followed, each real folder once, so that a
    dataset assembled from links is found and a link cycle cannot loop.
    """
    files: List[Path] = []
    seen = set()

    def fail(exc: OSError):
        raise exc

    for top, dirs, names in os.walk(root, followlinks=True, onerror=fail):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(top) / n for n in names if not n.startswith("."))
    return files


def _expand(pattern: str) -> List[Path]:
    """The files a glob matches. A pattern with a ``**`` component is matched against the files of one walk
    of the folder before its first wildcard (``_walk``: each real folder once, hidden ones skipped, as
    ``glob`` skips them); ``glob`` itself follows links to folders at every depth, so two links back up
    (``a/up1 -> ..``, ``a/up2 -> ..``) would make it list 2^40 paths."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return [Path(f) for f in _glob.glob(pattern) if Path(f).is_file()]
    first = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
    root = Path(*parts[:first]) if first else Path(".")
    if not root.is_dir():
        return []
    rest = parts[first:]
    return [f for f in _walk(root) if _matches(f.relative_to(root).parts, rest) and f.is_file()]


def _matches(parts: Tuple[str, ...], pattern: Tuple[str, ...]) -> bool:
    """Whether path components ``parts`` match glob components ``pattern`` (``**``: any number of folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _unique(files: List[Path]) -> List[Path]:
    """Each real file once, under its first name in sorted order: links may reach one file by two paths."""
    seen, kept = set(), []
    for f in sorted(files, key=lambda p: natural_key(str(p))):
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            kept.append(f)
    return kept


def _classify(where: str, candidates: List[Path], how: str) -> Found:
    by_fmt: Dict[str, List[Path]] = {}
    for p in candidates:
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is not None:
            by_fmt.setdefault(fmt, []).append(p)
    if not by_fmt:
        raise VRCurveError(f"{how} {where} found no data files (looked for {_all_suffixes()}); check --data.")
    if len(by_fmt) > 1:
        counts = ", ".join(f"{len(v)} {fmt}" for fmt, v in sorted(by_fmt.items()))
        example = by_fmt[sorted(by_fmt)[0]][0].suffix
        hint = (f"pass a glob that matches one of them, e.g. --data '{where.rstrip('/')}/**/*{example}'"
                if how == "the folder" else "narrow the glob to one suffix, e.g. *" + example)
        raise VRCurveError(f"{how} {where} found files of several formats ({counts}); {hint}.")
    fmt, files = next(iter(by_fmt.items()))
    files = sorted(files, key=lambda p: natural_key(str(p)))
    if fmt in ("npz", "hdf5") and len(files) > 1:
        raise VRCurveError(f"{how} {where} found {len(files)} {fmt} files ({files[0]}, {files[1]}, ...); vrcurve "
                           f"reads one {fmt} file at a time, so pass one of them.")
    return Found(fmt, tuple(files), single=False)


def discover(path: str) -> Found:
    """Resolve PATH into a format and its files.

    Raises:
        VRCurveError: the path does not exist, a folder or glob holds no data files (the message lists the
            suffixes looked for) or files of several formats, or the file type is not supported.
    """
    if not path.strip():  # Path("") is the current folder, which was never asked for
        raise VRCurveError("--data is empty; pass a file, a folder or a glob (or demo).")
    p = Path(path)
    if p.is_file():
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise VRCurveError(f"cannot read {path}: unsupported file type {p.suffix or '(none)'}; vrcurve reads "
                               f"{_all_suffixes()} files, folders of them, or a glob.")
        return Found(fmt, (p,), single=True)
    if p.is_dir():
        try:
            files = _walk(p)
        except OSError as exc:
            raise VRCurveError(f"cannot list folder {path} ({exc}); check its permissions.") from None
        return _classify(path, files, "the folder")
    if any(c in path for c in _GLOB_CHARS):
        try:
            files = _unique(_expand(path))
        except OSError as exc:
            raise VRCurveError(f"cannot list the folders of the glob {path} ({exc}); check their permissions.") from None
        return _classify(path, files, "the glob")
    if p.exists():
        raise VRCurveError(f"data path {path} is neither a file nor a folder; pass a file, a folder or a glob.")
    raise VRCurveError(f"data path {path} does not exist; check --data (or use --data demo).")
