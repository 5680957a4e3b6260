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
from .caches import cache_arch, cache_stem, is_text_encoder_cache

# File suffix -> format. A folder or glob must hold files of one format only.
FORMATS: Dict[str, str] = {
    ".npy": "npy", ".npz": "npz", ".safetensors": "safetensors",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".pt": "pt",
    ".png": "images", ".jpg": "images", ".jpeg": "images", ".webp": "images",
}
_GLOB_CHARS = "*?["
# Per-sample latent caches that trainers write beside (or instead of) the images they encode.
_CACHE_FORMATS = ("npz", "pt", "safetensors")
# OneTrainer keeps per-folder bookkeeping (image paths, crop sizes) in aggregate.pt beside its per-sample caches.
_BOOKKEEPING = {"aggregate.pt"}


def _all_suffixes() -> str:
    return ", ".join(FORMATS)


@dataclass(frozen=True)
class Found:
    """What PATH names.

    Attributes:
        fmt: one of the values of FORMATS.
        files: the files, sorted by path with digit runs compared by value (``2.npy`` before ``10.npy``).
        single: PATH named one file directly (rather than a folder or glob that matched files).
        notes: what the user should know about the choice of files (e.g. latent caches read rather than the
            images beside them), one sentence each, for the CLI to print on stderr.
    """

    fmt: str
    files: Tuple[Path, ...]
    single: bool
    notes: Tuple[str, ...] = ()


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


def _set_aside(by_fmt: Dict[str, List[Path]]) -> List[Path]:
    """Remove the files that lie among latent caches but hold no latents: kohya's text-encoder caches (beside
    .npz latent caches; beside musubi-tuner's .safetensors ones when those are named as caches) and OneTrainer's
    aggregate.pt. Returns the text-encoder caches removed."""
    removed: List[Path] = []
    for fmt in ("npz", "safetensors"):
        files = by_fmt.get(fmt, [])
        if fmt == "safetensors" and not any(cache_arch(p) for p in files):
            continue  # shards of one tensor, whatever their names
        removed += [p for p in files if is_text_encoder_cache(p)]
        by_fmt[fmt] = [p for p in files if not is_text_encoder_cache(p)]
    if "pt" in by_fmt:
        by_fmt["pt"] = [p for p in by_fmt["pt"] if p.name not in _BOOKKEEPING]
    for fmt in [f for f, v in by_fmt.items() if not v]:
        del by_fmt[fmt]
    return sorted(removed, key=lambda p: natural_key(str(p)))


def _prefer_caches(where: str, by_fmt: Dict[str, List[Path]], how: str) -> str:
    """Images side by side with their latent caches (a kohya dataset folder): keep the caches, and say so.

    A cache belongs to an image when its name is the image's with the suffix replaced, as kohya's trainers
    (``a.png`` -> ``a_0512x0512_flux.npz``, ``a.npz`` or ``a_0512x0512_qi.safetensors``) and per-sample .pt
    trainers name them. Latent files that do not all belong to an image leave no way to decide between the two,
    which is an error.
    """
    (fmt,) = [f for f in by_fmt if f != "images"]
    images, caches = by_fmt["images"], by_fmt[fmt]
    stems = {p.with_suffix("") for p in images}
    strangers = [c for c in caches if cache_stem(c) not in stems]
    suffix = f".{fmt}"
    if strangers:
        raise VRCurveError(f"{how} {where} holds {len(images)} images and {len(caches)} {suffix} files, and "
                           f"{len(strangers)} of those (e.g. {strangers[0]}) are not named after an image as latent "
                           f"caches are, so there is no way to decide which to read; pass a glob that matches one "
                           f"kind, e.g. --data '{_glob_root(where, how)}/**/*{suffix}'.")
    covered = len({cache_stem(c) for c in caches})
    del by_fmt["images"]
    note = (f"reading the {len(caches)} latent caches ({suffix}) in {how} {where}, not the {len(images)} images "
            "beside them")
    if covered < len(images):
        note += f" ({len(images) - covered} of which have no cache)"
    return note + f"; to read the images, pass a glob such as --data '{_glob_root(where, how)}/**/*{images[0].suffix}'."


def _glob_root(where: str, how: str) -> str:
    return where.rstrip("/") if how == "the folder" else str(Path(where).parent)


def _one_model(where: str, caches: List[Path], how: str) -> None:
    """kohya's trainers name a cache after its model (``_sdxl.npz``, ``_flux.npz``, ``_wan.safetensors``, ...): a
    folder cached for two models holds two latents of every image, which must not be pooled."""
    by_kind: Dict[str, int] = {}
    for p in caches:
        arch = cache_arch(p)
        kind = f"*_{arch}{p.suffix}" if arch else f"other {p.suffix}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    if len(by_kind) > 1:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items()))
        example = next(k for k in sorted(by_kind) if not k.startswith("other "))
        raise VRCurveError(f"{how} {where} holds latent caches of several models or kinds ({counts}); pass a glob "
                           f"that matches one, e.g. --data '{_glob_root(where, how)}/**/{example}'.")


def _classify(where: str, candidates: List[Path], how: str) -> Found:
    by_fmt: Dict[str, List[Path]] = {}
    for p in candidates:
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is not None:
            by_fmt.setdefault(fmt, []).append(p)
    removed = _set_aside(by_fmt)
    if not by_fmt:
        if removed:
            raise VRCurveError(f"{how} {where} holds only text-encoder caches ({len(removed)} files such as "
                               f"{removed[0].name}), no latent caches; pass the folder of the latent caches (kohya "
                               "writes them with --cache_latents_to_disk).")
        raise VRCurveError(f"{how} {where} found no data files (looked for {_all_suffixes()}); check --data.")
    notes: List[str] = []
    if len(by_fmt) == 2 and "images" in by_fmt and any(f in by_fmt for f in _CACHE_FORMATS):
        notes.append(_prefer_caches(where, by_fmt, how))
    if len(by_fmt) > 1:
        counts = ", ".join(f"{len(v)} {fmt}" for fmt, v in sorted(by_fmt.items()))
        example = by_fmt[sorted(by_fmt)[0]][0].suffix
        hint = (f"pass a glob that matches one of them, e.g. --data '{where.rstrip('/')}/**/*{example}'"
                if how == "the folder" else "narrow the glob to one suffix, e.g. *" + example)
        raise VRCurveError(f"{how} {where} found files of several formats ({counts}); {hint}.")
    fmt, files = next(iter(by_fmt.items()))
    files = sorted(files, key=lambda p: natural_key(str(p)))
    if fmt == "hdf5" and len(files) > 1:
        raise VRCurveError(f"{how} {where} found {len(files)} {fmt} files ({files[0]}, {files[1]}, ...); vrcurve "
                           f"reads one {fmt} file at a time, so pass one of them.")
    if fmt in ("npz", "safetensors") and len(files) > 1:
        _one_model(where, files, how)
    return Found(fmt, tuple(files), single=False, notes=tuple(notes))


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
