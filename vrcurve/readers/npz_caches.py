"""Folders of per-image .npz latent caches, as kohya sd-scripts writes them with ``--cache_latents_to_disk``.

kohya writes one uncompressed .npz (``np.savez``) beside each image: ``<image>_<WWWW>x<HHHH>_<arch>.npz``
(``_sd``, ``_sdxl``, ``_sd3``, ``_flux``, ``_lumina``, ``_hi``, ``_anima``; WWWW x HHHH is the image's own
size) or, from old SD runs, ``<image>.npz``. The latent is stored as float32 under ``latents`` or, for models
trained at several resolutions, ``latents_<h>x<w>`` (the latent's height and width), beside
``original_size*``, ``crop_ltrb*`` and optional ``latents_flipped*`` and ``alpha_mask*``, which are not
samples. A latent is (C, H, W), or (C, F, H, W) for video VAEs (Anima's is (16, 1, H, W)).

A file that holds several ``latents_<h>x<w>`` arrays (the same image cached for datasets of several
resolutions) gives one sample per array, each in its own shape: the trainer trains on every one of them, so
they are resolution buckets of the same images. Every file's zip directory and latent headers are read when
the source is opened, since the number of samples depends on them; array data is read only for the chosen
samples. See docs/data.md, "Trainer latent caches".
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import BadSample, PerFileSource, check_real_numeric, natural_key, sample_shape, to_float32
from .caches import check_group_channels

_LATENT_KEY = re.compile(r"^latents(_\d+x\d+)?$")
_KOHYA_SIDE_KEYS = re.compile(r"^(original_size|crop_ltrb)(_\d+x\d+)?$")


class Member(NamedTuple):
    """One array of a .npz archive, from its headers.

    Attributes:
        shape, dtype, fortran: the array's header.
        offset: where its raw data starts in the archive file, or None when it is compressed.
    """

    shape: Tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: Optional[int]


def npz_members(path: Path, wanted: Optional[Callable[[str], bool]] = None) -> Dict[str, Optional[Member]]:
    """{array name: Member} of a .npz file from its zip directory and the arrays' .npy headers (no data read).

    A stored (uncompressed) member's bytes lie in the archive as they are: its local header (30 bytes, then
    the name and the extra field, whose lengths are in that header) is followed by the .npy file itself.

    Args:
        wanted: the names whose headers to read (all when None); the others map to None, which saves a seek
            and a read per array when thousands of files are opened.

    Raises:
        BadSample: the file is not a readable zip archive of .npy arrays.
    """
    members: Dict[str, Optional[Member]] = {}
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                if wanted is not None and not wanted(name):
                    members[name] = None
                elif info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if len(local) != 30 or local[:4] != b"PK\x03\x04":
                        raise BadSample(f"damaged zip entry {info.filename}")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    fh.seek(info.header_offset + 30 + name_len + extra_len)
                    shape, fortran, dtype = _npy_header(fh)
                    members[name] = Member(tuple(int(s) for s in shape), dtype, fortran, fh.tell())
                else:
                    with zf.open(info) as member:
                        shape, fortran, dtype = _npy_header(member)
                    members[name] = Member(tuple(int(s) for s in shape), dtype, fortran, None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error, NotImplementedError) as exc:
        raise BadSample(str(exc) or type(exc).__name__) from None
    return members


def _npy_header(fh) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def latent_keys(members: Dict[str, Any], key: Optional[str] = None) -> List[str]:
    """The arrays of a .npz file that are samples, in natural order: ``[key]`` when it is given (and present);
    else, for a kohya cache (``latents`` or ``latents_<h>x<w>`` beside ``original_size`` or ``crop_ltrb``), its
    latents arrays; else none. An archive of arrays that merely include ``latents`` is a dataset, not a cache."""
    if key is not None:
        return [key] if key in members else []
    if not any(_KOHYA_SIDE_KEYS.match(k) for k in members):
        return []
    return sorted((k for k in members if _LATENT_KEY.match(k)), key=natural_key)


def is_latent_cache(path: Path) -> bool:
    """Whether ``path`` is a readable kohya latent cache."""
    try:
        return bool(latent_keys(npz_members(path, _LATENT_KEY.match)))
    except BadSample:
        return False


def single_cache_error(path: Path) -> Optional[VRCurveError]:
    """The error for one kohya cache file given as --data (it is one sample), or None when it is not one."""
    try:
        members = npz_members(path, _LATENT_KEY.match)
    except BadSample:
        return None  # the .npz reader says what is wrong with it
    keys = latent_keys(members)
    if not keys:
        return None
    shapes = ", ".join(f"{k} {members[k].shape}" for k in keys)
    return VRCurveError(f"{path} is a latent cache of one image ({shapes}), not an (N, ...) array of samples; pass "
                        f"the folder that holds the caches, e.g. --data {path.parent}, to read one sample per file.")


def _array_names(path: Path) -> str:
    """The names of the arrays of a readable .npz file, in natural order, for a message (no header read)."""
    return ", ".join(sorted(npz_members(path, lambda _: False), key=natural_key)) or "none"


class _Entry(NamedTuple):
    path: Path
    key: Optional[str]  # None: the file could not be read (only kept with skip_bad)
    member: Optional[Member]


class NpzCacheSource(PerFileSource):
    """Per-image .npz latent caches (kohya sd-scripts layout); each latents array is one sample.

    Sample i is array ``keys[i]`` of ``files[i]``: files in sorted path order, and within a file its
    ``latents`` / ``latents_<h>x<w>`` arrays in natural order (or the array ``key`` names). ``files`` thus
    repeats a file that holds several resolutions. Every shape is known once the source is open, so
    ``groups()`` needs no further reads; the channel count (axis 0 of a sample) must be the same in all files.
    """

    format = "npz-caches"
    what = "file"

    def __init__(self, name: str, files: Sequence[Path], key: Optional[str] = None, skip_bad: bool = False):
        self.name = name
        self.skip_bad = skip_bad
        self.key = key
        entries: List[_Entry] = []
        lacking: List[Path] = []
        wanted = (lambda name: name == key) if key is not None else _LATENT_KEY.match
        for path in files:
            try:
                members = npz_members(path, wanted)
            except BadSample as exc:
                if not skip_bad:
                    raise self._undecodable(path, str(exc)) from None
                entries.append(_Entry(path, None, None))
                continue
            keys = latent_keys(members, key)
            if not keys:
                lacking.append(path)
                continue
            entries.extend(self._entries_of(path, members, keys))
        if not any(e.key is not None for e in entries):
            raise self._no_latents(files, lacking)
        if lacking and not skip_bad:
            held = f"no array {key!r}" if key is not None else "no latents"
            raise VRCurveError(f"{lacking[0]} holds {held} (its arrays: {_array_names(lacking[0])}), unlike the other "
                               f"caches of {name}; remove it, pass a glob that leaves it out, or pass --skip-bad to "
                               "skip it.")
        self._entries = entries
        self.files = [e.path for e in entries]
        self.keys = [e.key for e in entries]
        self.n = len(entries)
        self._skipped_at_open = len(lacking)
        self._file_shapes = [None if e.member is None else sample_shape(e.member.shape) for e in entries]
        first = next(i for i, e in enumerate(entries) if e.key is not None)
        self._first = entries[first].path
        self.shape = self._file_shapes[first]
        self._index = {(e.path, s): e for e, s in zip(entries, self._file_shapes) if s is not None}
        check_group_channels(self.name, self.groups(), self.sample_name)

    def _entries_of(self, path: Path, members: Dict[str, Member], keys: List[str]) -> List[_Entry]:
        out, seen = [], {}
        for k in keys:
            m = members[k]
            check_real_numeric(f"array {k!r} of {path}", m.dtype, "latents")
            shape = sample_shape(m.shape)
            if not shape:
                raise VRCurveError(f"array {k!r} of {path} is a scalar, not a latent; name the latents with --key.")
            if shape in seen:
                raise VRCurveError(f"{path} holds two latents of shape {shape} ({seen[shape]!r} and {k!r}); choose "
                                   "one with --key.")
            seen[shape] = k
            out.append(_Entry(path, k, m))
        return out

    def _no_latents(self, files: Sequence[Path], lacking: List[Path]) -> VRCurveError:
        if not lacking:
            return VRCurveError(f"none of the {len(files)} .npz files of {self.name} can be read; check that the "
                                "files are complete.")
        arrays = _array_names(lacking[0])
        if self.key is not None:
            return VRCurveError(f"none of the {len(files)} .npz files of {self.name} holds an array {self.key!r} (e.g. "
                                f"{lacking[0]} holds {arrays}); pass one of them with --key.")
        return VRCurveError(f"none of the {len(files)} .npz files of {self.name} is a latent cache (latents or "
                            f"latents_<h>x<w> beside original_size and crop_ltrb, as kohya writes them; {lacking[0]} "
                            f"holds {arrays}); pass one file to read its (N, ...) array, or name the array that holds "
                            "one sample in every file with --key.")

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        # groups() never calls this (every shape is known at open); it answers for the file's first latent.
        for e, s in zip(self._entries, self._file_shapes):
            if e.path == path and s is not None:
                return s
        raise BadSample("no readable latents")

    def sample_name(self, index: int) -> str:
        e = self._entries[index]
        where = e.path if e.key is None or e.key == "latents" else f"{e.path}:{e.key}"
        return f"{where} (sample {index})"

    def sources(self) -> List[str]:
        return list(dict.fromkeys(str(f) for f in self.files))

    def describe(self) -> Dict[str, Any]:
        keys = sorted({k for k in self.keys if k is not None}, key=natural_key)
        return {**super().describe(), "sources_total": len(self.sources()), "keys": keys[:32],
                "files_without_latents": self._skipped_at_open}

    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        entry = self._index.get((path, shape))
        if entry is None:  # only files whose headers could not be read at open (kept with skip_bad)
            raise BadSample("its zip directory could not be read")
        m = entry.member
        try:
            if m.offset is not None:
                count = int(np.prod(m.shape))
                arr = np.fromfile(path, dtype=m.dtype, count=count, offset=m.offset)
                if arr.size != count:
                    raise BadSample(f"array {entry.key!r} is truncated")
                arr = arr.reshape(m.shape, order="F" if m.fortran else "C")
            else:
                with np.load(path, allow_pickle=False) as archive:
                    arr = archive[entry.key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BadSample(str(exc) or type(exc).__name__) from None
        return to_float32(arr, f"array {entry.key!r} of {path}").reshape(shape)

