"""Which devices a run computes on: one parser for ``--device``, ``estimate(device=...)`` and torchrun ranks.

A device is ``cpu``, ``cuda`` or ``cuda:N``; a list is comma-separated (``cuda:0,cuda:1``, ``cpu,cpu``) or a
sequence. ``cuda`` alone, as a string, means every visible GPU; under torchrun it means this rank's GPU,
cuda:LOCAL_RANK (``local_device``).
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch

from .errors import VRCurveError

DeviceSpec = Union[str, torch.device, Sequence[Union[str, torch.device]]]


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """One device, checked against this machine: a CUDA device must exist."""
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError):
        raise VRCurveError(f"unknown device {device!r}; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VRCurveError(f"--device {device} asks for CUDA, but no CUDA device is available here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VRCurveError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif dev.type != "cpu":
        raise VRCurveError(f"unsupported device {device!r}; use cpu, cuda or cuda:N.")
    return dev


def resolve_devices(device: DeviceSpec) -> List[torch.device]:
    """The devices of ``device``: one device, a sequence of them, or a comma-separated string (``cuda`` alone,
    as a string, is every visible GPU). All of one type; a GPU listed once."""
    if isinstance(device, str):
        names: List[Union[str, torch.device]] = [d.strip() for d in device.split(",")]
        if names == ["cuda"]:
            resolve_device("cuda")
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    elif isinstance(device, torch.device) or not isinstance(device, Sequence):
        names = [device]
    else:
        names = list(device)
    if not names:
        raise VRCurveError("no device given; use cpu, cuda, cuda:N or a comma-separated list of them.")
    devices = [resolve_device(name) for name in names]
    label = device if isinstance(device, str) else ",".join(map(str, devices))
    if len({d.type for d in devices}) > 1:
        raise VRCurveError(f"--device {label} mixes CPU and CUDA; list devices of one kind.")
    if any(d.type == "cuda" and d.index is None for d in devices) and len(devices) > 1:
        raise VRCurveError(f"--device {label}: name each GPU of a list as cuda:N.")
    if len(set(devices)) < len(devices) and devices[0].type == "cuda":
        raise VRCurveError(f"--device {label} lists a GPU twice; name each one once.")
    return devices


def local_device(device: DeviceSpec, local_rank: int) -> DeviceSpec:
    """``--device cuda`` under torchrun means this rank's GPU, cuda:LOCAL_RANK (one GPU per process, the
    torchrun convention); ``cpu``, explicit lists and device objects mean what they say on every rank."""
    return f"cuda:{local_rank}" if isinstance(device, str) and device.strip() == "cuda" else device
