"""The artifact's metadata as one typed object (docs/integration.md, "The artifact").

An artifact stores its metadata as strings: a str value as it is, any other value JSON-encoded with sorted
keys. ``ArtifactMeta`` is that metadata decoded and typed, one field per entry that vrcurve writes, with the
defaults of entries an older artifact lacks in one place (the fields' ``absent`` values). It is also a
read-only mapping of the entries as stored (key -> decoded JSON value), so that ``meta["logitnormal_m"]``
reads what the file holds; entries this version does not know are kept in ``extra``, shown and written back.

``ArtifactMeta.from_strings`` decodes what a file holds and refuses, with one sentence, what no vrcurve writes
(a missing required entry, a wrong type, a value outside its allowed ones); ``to_strings`` is what
``write_artifact`` stores. This module imports neither torch nor safetensors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

from ._version import __version__
from .errors import VRCurveError
from .options import Form, Likelihood, NoiseSpace, Normalize, choices

FORMAT = "vrcurve"
FORMAT_VERSION = 2
T0_NOISE = "t0_noise"
T1_NOISE = "t1_noise"

PathLike = Union[str, "os.PathLike[str]"]


def encode(value: Any) -> str:
    """A metadata value as stored: a str as it is, anything else as JSON with sorted keys."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def decode(text: str) -> Any:
    """A stored metadata string as its value: the JSON it holds, or the string itself when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def stored_version(raw: Mapping[str, str], path: PathLike) -> int:
    """The format version of stored metadata ``raw``, once it is known to be a vrcurve artifact's of a version
    this vrcurve reads (1 to ``FORMAT_VERSION``).

    Raises:
        VRCurveError: no ``format=vrcurve`` entry, a format_version that is not a whole number >= 1, or a newer
            one (the message names the vrcurve that wrote it).
    """
    if raw.get("format") != FORMAT:
        raise VRCurveError(f"{path} is a safetensors file but not a vrcurve artifact (no format=vrcurve metadata).")
    text = raw.get("format_version", "")
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise VRCurveError(f"{path} has an invalid format_version {text!r}; re-create it with `vrcurve estimate`.")
    version = int(text)
    if version > FORMAT_VERSION:
        raise VRCurveError(
            f"{path} has format version {version}, written by vrcurve {raw.get('vrcurve_version', '?')}; "
            f"this vrcurve {__version__} reads versions 1 to {FORMAT_VERSION}: upgrade vrcurve to read it."
        )
    return version


def buckets_in_version_1(path: PathLike) -> VRCurveError:
    """The error for a version-1 file holding resolution buckets (metadata or tensors), which came in version 2."""
    return VRCurveError(f"{path} is format version 1 but holds resolution buckets, which version 1 has not; "
                        "re-create it with `vrcurve estimate`.")


# --- what each entry may hold ---------------------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def _interval(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_number, value)) and value[0] <= value[1]


def _scheduler(value: Any) -> bool:
    if not (isinstance(value, dict) and isinstance(value.get("name"), str)):
        return False
    params = [v for k, v in value.items() if k != "name"]
    if not all(_number(v) or isinstance(v, str) for v in params):
        return False
    return all(_number(value[k]) and value[k] > 0 for k in ("shift", "beta_min", "beta_max") if k in value)


def _normalization(value: Any) -> bool:
    return isinstance(value, dict) and value.get("mode") in choices(Normalize)


def _dropped(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, dict) and isinstance(d.get("shape"), list) and all(map(_count, d["shape"]))
        and _count(d.get("samples_total")) for d in value)


def _entry(check: Optional[Callable[[Any], bool]] = None, *, absent: Any = None,
           load: Optional[Callable[[Any], Any]] = None, required: bool = False) -> Any:
    """A metadata field: ``check`` says what a stored value may be (None: not checked here), ``absent`` is the
    value of an entry the file lacks (None: the field is None), ``load`` turns the decoded JSON value into the
    field's type, ``required`` entries must be in every file."""
    return field(default=None, metadata={"check": check, "absent": absent, "load": load, "required": required})


def _plain(value: Any) -> Any:
    """A field value as decoded JSON: tuples as lists, nested records as dicts (always a fresh copy)."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fields(cls) -> Tuple[Any, ...]:
    return tuple(f for f in fields(cls) if f.name != "extra")


class _Record:
    """Known entries as typed fields (``_entry``), the others in ``extra``; built from and turned back into
    decoded JSON values."""

    extra: Mapping[str, Any]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]):
        """From decoded entries (key -> JSON value), not validated; entries that are not fields go to ``extra``."""
        known = {f.name: f for f in _fields(cls)}
        kwargs: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                extra[key] = _plain(value)
            elif value is not None:
                load = f.metadata["load"]
                kwargs[key] = load(value) if load is not None else _plain(value)
        return cls(**kwargs, extra=extra)

    @classmethod
    def coerce(cls, value: Optional[Mapping[str, Any]]):
        """``value`` itself if it is one already, else the record of its decoded entries (``from_values``, not
        validated: for metadata built in code); None is no entries."""
        return value if isinstance(value, cls) else cls.from_values(value or {})

    def to_dict(self) -> Dict[str, Any]:
        """The entries as decoded JSON values: the fields that are set, in field order, then ``extra`` sorted."""
        out = {f.name: _plain(getattr(self, f.name)) for f in _fields(type(self)) if getattr(self, f.name) is not None}
        clash = sorted(set(out) & set(self.extra))
        if clash:
            raise ValueError(f"extra entry {clash[0]!r} is a field of {type(self).__name__}; set the field instead.")
        out.update((k, _plain(self.extra[k])) for k in sorted(self.extra))
        return out


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(value)


@dataclass(frozen=True)
class DroppedBucket(_Record):
    """A resolution bucket left out of the estimate (``--drop-small-buckets``).

    Attributes:
        shape: the bucket's sample shape.
        samples_total: how many samples of that shape the data holds.
    """

    shape: Tuple[int, ...] = _entry(load=_shape)
    samples_total: Optional[int] = _entry()
    extra: Mapping[str, Any] = field(default_factory=dict)


def _bucket_shape(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(map(_count, value))


def _share(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 < value <= 1


@dataclass(frozen=True)
class BucketMeta(_Record):
    """One resolution bucket's entry in the artifact's ``buckets`` list: its share of the data and its own fit.

    Every field but those marked optional is in every file (``ArtifactMeta.from_strings`` checks); a bucket
    built in code may lack them (None).

    Attributes:
        shape: the bucket's sample (latent) shape, without the batch axis.
        dim: d, the number of elements of one sample.
        samples_total: the samples of that shape in the data.
        share: samples_total over all buckets' (the weight of its density in the pooled mixture), in (0, 1].
        samples: M, the samples its curve was estimated from.
        logitnormal_m, logitnormal_m_grid, logitnormal_s, ks: its logit-normal fit (as the artifact's).
        fingerprint: optional; the hash of the samples chosen.
        skipped: optional; the files of this bucket skipped as undecodable.
        peak_t: optional; the t of the density's largest bin (t = 0 noise).
        logitnormal_m_ci90: optional; the bootstrap 90% interval of m.
    """

    shape: Tuple[int, ...] = _entry(_bucket_shape, load=_shape, required=True)
    dim: Optional[int] = _entry(_count, required=True)
    samples_total: Optional[int] = _entry(_count, required=True)
    share: Optional[float] = _entry(_share, required=True)
    samples: Optional[int] = _entry(_count, required=True)
    logitnormal_m: Optional[float] = _entry(_number, required=True)
    logitnormal_m_grid: Optional[float] = _entry(_number, required=True)
    logitnormal_s: Optional[float] = _entry(_number, required=True)
    ks: Optional[float] = _entry(_number, required=True)
    fingerprint: Optional[str] = _entry(_text)
    skipped: Optional[int] = _entry(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    peak_t: Optional[float] = _entry(_number)
    logitnormal_m_ci90: Optional[Tuple[float, float]] = _entry(_interval, load=tuple)
    extra: Mapping[str, Any] = field(default_factory=dict)


def _buckets(value: Any) -> Tuple[BucketMeta, ...]:
    return tuple(BucketMeta.from_values(b) for b in value)


def _dropped_buckets(value: Any) -> Tuple[DroppedBucket, ...]:
    return tuple(DroppedBucket.from_values(d) for d in value)


@dataclass(frozen=True, eq=False)
class ArtifactMeta(_Record, Mapping):
    """An artifact's metadata, typed; also a read-only mapping of its entries as stored (key -> JSON value).

    Every field is None when the artifact lacks the entry, except those with a default for artifacts written
    before the entry existed: ``time_convention`` (``t0_noise``), ``logitnormal_s`` (1.0: the scale is fitted
    only with ``--fit-scale``) and ``uniform_mix`` (0.0: artifacts written before the density floor, all of
    format version 1, have none). A defaulted entry the file lacks is not in the mapping. The mapping's values
    are decoded JSON (lists, not tuples; buckets as dicts), copied when the object is made; it iterates in field
    order (the order ``vrcurve show`` prints), then ``extra`` sorted; two metadata are equal when their entries
    are. Built in code (``ArtifactMeta(...)``, ``coerce``) it is not validated; ``from_strings`` validates.

    Attributes:
        scheduler: the noise scheduler, ``{"name": ..., <parameters>}`` (``Scheduler.describe()``).
        likelihood: ``mean`` or ``sum``; form: ``covariance`` or ``paper`` (docs/estimator.md).
        uniform_mix: the density floor lambda in [0, 1): the share of uniform timesteps mixed into the density.
        samples, noise, timesteps: M, K and T; dim: d, the elements of one sample.
        shape: the sample (latent) shape, without the batch axis (the largest bucket's for several).
        seed: the seed of the sample choice and of every noise.
        normalization: how the data was normalised (``mode``: global, channel or none; its statistics; the
            trainer's ``scaling_factor`` and ``shift_factor``).
        data: what was read: path, key, format, samples found and chosen, files skipped, fingerprint, ...
        logitnormal_m, logitnormal_m_grid, logitnormal_s, ks: the KS-best logit-normal fit of the density,
            logit(t) ~ N(m, s^2) with t = 0 noise (continuous m, best m on the grid, scale, KS distance).
        logitnormal_m_ci90: the bootstrap 90% interval of m; bootstrap: how it was drawn.
        convergence: the nested-subset check (``--check-convergence``).
        buckets: each resolution bucket's metadata, largest first (data of several sample shapes only).
        min_bucket: the fewest samples a bucket was estimated from; buckets_dropped: buckets left out.
        time_convention: ``t0_noise`` (t = 0 is noise) or ``t1_noise``.
        device, precision, kernel, kernel_choice, noise_space: how the estimate ran.
        elapsed_s: its wall time in seconds; created: when it finished (ISO 8601, UTC).
        format, format_version, vrcurve_version, checksum: set by ``write_artifact`` (None before).
        extra: entries this vrcurve does not know (from a newer one), decoded; kept and written back.
    """

    scheduler: Optional[Dict[str, Any]] = _entry(_scheduler)
    likelihood: Optional[str] = _entry(_one_of(*choices(Likelihood)))
    form: Optional[str] = _entry(_one_of(*choices(Form)))
    uniform_mix: float = _entry(lambda v: _number(v) and 0 <= v < 1, absent=0.0)
    samples: Optional[int] = _entry(_count)
    noise: Optional[int] = _entry(_count)
    timesteps: Optional[int] = _entry(_count)
    dim: Optional[int] = _entry(_count)
    shape: Optional[Tuple[int, ...]] = _entry(lambda v: isinstance(v, list) and all(map(_count, v)), load=_shape)
    seed: Optional[int] = _entry(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    normalization: Optional[Dict[str, Any]] = _entry(_normalization)
    data: Optional[Dict[str, Any]] = _entry(_object)
    logitnormal_m: Optional[float] = _entry(_number, required=True)
    logitnormal_m_grid: Optional[float] = _entry(_number)
    logitnormal_s: float = _entry(lambda v: _number(v) and v > 0, absent=1.0)
    ks: Optional[float] = _entry(lambda v: _number(v) and 0 <= v <= 1)
    logitnormal_m_ci90: Optional[Tuple[float, float]] = _entry(_interval, load=tuple)
    bootstrap: Optional[Dict[str, Any]] = _entry(_object)
    convergence: Optional[Dict[str, Any]] = _entry(_object)
    buckets: Optional[Tuple[BucketMeta, ...]] = _entry(load=_buckets)  # checked by _check_buckets
    min_bucket: Optional[int] = _entry(_count)
    buckets_dropped: Optional[Tuple[DroppedBucket, ...]] = _entry(_dropped, load=_dropped_buckets)
    time_convention: str = _entry(_one_of(T0_NOISE, T1_NOISE), absent=T0_NOISE, required=True)
    device: Optional[str] = _entry(_text)
    precision: Optional[str] = _entry(_text)
    kernel: Optional[str] = _entry(_text)
    kernel_choice: Optional[str] = _entry(_text)
    noise_space: Optional[str] = _entry(_one_of(*choices(NoiseSpace)))
    elapsed_s: Optional[float] = _entry(lambda v: _number(v) and v >= 0)
    created: Optional[str] = _entry(_text)
    format: Optional[str] = _entry()  # checked by stored_version
    format_version: Optional[int] = _entry()
    vrcurve_version: Optional[str] = _entry(_text)
    checksum: Optional[str] = _entry()  # checked by read_artifact against the tensors and entries
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # An entry the file lacks takes its documented default, but stays out of the mapping of stored entries.
        entries = _Record.to_dict(self)
        for f in _fields(type(self)):
            if getattr(self, f.name) is None and f.metadata["absent"] is not None:
                object.__setattr__(self, f.name, f.metadata["absent"])
        object.__setattr__(self, "_entries", entries)

    # --- the mapping of stored entries -------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # --- to and from the stored strings ------------------------------------------------------------------

    @classmethod
    def from_strings(cls, raw: Mapping[str, str], path: PathLike) -> "ArtifactMeta":
        """Decode, migrate and validate the metadata strings an artifact at ``path`` holds.

        Format version 2 added resolution buckets and the metadata to what the checksum covers (which
        ``read_artifact`` verifies); a version-1 file needs nothing else: the entries it lacks take their
        defaults, and its ``format_version`` stays 1.

        Raises:
            VRCurveError: not a vrcurve artifact, a format version this vrcurve does not read
                (``stored_version``), a missing required entry, an entry of the wrong type or outside its
                allowed values, or resolution buckets that no vrcurve writes; the message names ``path``.
        """
        version = stored_version(raw, path)
        values = {k: decode(v) for k, v in raw.items()}
        values["format_version"] = version
        if version < 2 and "buckets" in values:
            raise buckets_in_version_1(path)
        _check(path, values)
        return cls.from_values(values)

    def to_dict(self) -> Dict[str, Any]:
        """The entries as stored, decoded (a copy of the mapping; defaults of absent entries not included)."""
        return _plain(self._entries)

    def to_strings(self) -> Dict[str, str]:
        """The entries as ``write_artifact`` stores them: a str as it is, anything else as sorted-key JSON."""
        return {k: encode(v) for k, v in self._entries.items()}

    def bucket(self, b: int) -> "ArtifactMeta":
        """Bucket ``b``'s metadata: this artifact's entries but ``buckets``, with the bucket's own (shape,
        counts, fit) over them."""
        values = {k: v for k, v in self._entries.items() if k != "buckets"}
        values.update(self.buckets[b].to_dict())
        return ArtifactMeta.from_values(values)


KEYS = tuple(f.name for f in _fields(ArtifactMeta))  # the entries vrcurve writes, in the order they are shown


def _check(path: PathLike, values: Mapping[str, Any]) -> None:
    """Refuse decoded metadata that no vrcurve writes: a required entry missing, or a field's ``check`` failing."""
    for f in _fields(ArtifactMeta):
        if f.metadata["required"] and f.name not in values:
            raise VRCurveError(f"{path} lacks the metadata entry {f.name!r}; re-create it with `vrcurve estimate`.")
    for f in _fields(ArtifactMeta):
        check = f.metadata["check"]
        if check is not None and f.name in values and not check(values[f.name]):
            raise VRCurveError(f"{path} has an invalid metadata entry {f.name}={json.dumps(values[f.name])[:80]}; "
                               "re-create it with `vrcurve estimate`.")
    if "buckets" in values:
        _check_buckets(path, values["buckets"])


def _check_buckets(path: PathLike, buckets: Any) -> None:
    """Refuse a ``buckets`` entry that is not a non-empty list of objects with every required ``BucketMeta``
    field valid, distinct shapes, and shares adding up to 1."""
    bad = f"{path} has invalid resolution buckets"
    again = "re-create it with `vrcurve estimate`."
    if not isinstance(buckets, list) or not buckets or not all(isinstance(b, dict) for b in buckets):
        raise VRCurveError(f"{bad}: the buckets metadata is not a list of objects; {again}")
    entries = _fields(BucketMeta)
    for i, b in enumerate(buckets):
        lacking = [f.name for f in entries if f.metadata["required"] and f.name not in b]
        if lacking:
            raise VRCurveError(f"{bad}: bucket {i} lacks {', '.join(lacking)}; {again}")
        if not _bucket_shape(b["shape"]):
            raise VRCurveError(f"{bad}: bucket {i} has the shape {b['shape']!r}, not a list of positive whole numbers.")
    if len({tuple(b["shape"]) for b in buckets}) < len(buckets):
        raise VRCurveError(f"{bad}: two buckets have the same shape; {again}")
    for i, b in enumerate(buckets):
        wrong = [f.name for f in entries if f.name not in ("shape", "share") and f.name in b
                 and not f.metadata["check"](b[f.name])]
        if wrong:
            raise VRCurveError(f"{bad}: bucket {i} has an invalid {wrong[0]} {b[wrong[0]]!r}; {again}")
    shares = [b["share"] for b in buckets]
    if not all(map(_share, shares)) or abs(sum(shares) - 1) > 1e-6:
        raise VRCurveError(f"{bad}: the bucket shares {shares} do not add up to 1; {again}")
