"""GPUs for local workers: which device each worker process sees, and how it is told.

A worker process is given one device through ``CUDA_VISIBLE_DEVICES``, which CUDA reads once,
when it initialises; so the variable is set at the start of the worker process, before any user
code can touch CUDA. Inside the process the device is renumbered to ``cuda:0``, and
``POPTUNE_DEVICE`` says what to use (``"cuda:0"`` or ``"cpu"``)::

    device = torch.device(os.environ.get("POPTUNE_DEVICE", "cpu"))

Devices are written strictly as ``"cuda:N"`` (N >= 0) or ``"cpu"`` (no GPU for that worker).
``cuda:N`` means what it means to PyTorch in the process that starts the workers: the N-th GPU
that process can see. If that process already has ``CUDA_VISIBLE_DEVICES`` (a SLURM job with
``--gres=gpu:2`` gets e.g. ``2,3``), ``cuda:1`` is the second entry of that list (GPU 3).

More workers than devices share them round-robin: worker ``i`` gets ``devices[i % len(devices)]``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

from ._validation import invalid

__all__ = [
    "CUDA_VISIBLE_DEVICES",
    "POPTUNE_DEVICE",
    "apply_environment",
    "cuda_initialised",
    "device_environment",
    "idle_devices",
    "parse_device",
    "parse_devices",
]

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
POPTUNE_DEVICE = "POPTUNE_DEVICE"

_CUDA = re.compile(r"cuda:(0|[1-9][0-9]*)")
_FORMAT = "'cuda:N' (N >= 0) or 'cpu'"


def parse_device(device: object, name: str = "--device") -> str:
    """Return ``device`` if it is ``"cuda:N"`` (N >= 0) or ``"cpu"``, else raise
    :class:`~poptune.errors.InvalidParameterError` (a ``ValueError``).

    ``name`` is the parameter (or command-line option) the message names.

    Example:
        >>> parse_device("cuda:1")
        'cuda:1'
    """
    if isinstance(device, str) and (device == "cpu" or _CUDA.fullmatch(device)):
        return device
    raise invalid(name, _FORMAT, device, hint=_hint(device))


def parse_devices(devices: object) -> tuple[str, ...]:
    """Validate the ``devices`` parameter: a non-empty list (or tuple) of device strings.

    Duplicates are allowed (``["cuda:0", "cuda:0"]`` puts two workers on one GPU).

    Raises:
        InvalidParameterError: (a ``ValueError``) naming the parameter, the value and the
            expected form.

    Example:
        >>> parse_devices(["cuda:0", "cuda:1", "cpu"])
        ('cuda:0', 'cuda:1', 'cpu')
    """
    if isinstance(devices, str | bytes) or not isinstance(devices, Sequence) or not devices:
        raise invalid(
            "devices",
            f"a non-empty list of devices, each {_FORMAT}, e.g. ['cuda:0', 'cuda:1']",
            devices,
            hint=f"Pass a list: [{devices!r}]." if isinstance(devices, str) else None,
        )
    return tuple(parse_device(device, f"devices[{index}]") for index, device in enumerate(devices))


def device_environment(
    devices: Sequence[str], worker_index: int, visible: str | None = None
) -> dict[str, str]:
    """The environment variables of worker ``worker_index``: its device, round-robin.

    ``visible`` is ``CUDA_VISIBLE_DEVICES`` of the process that starts the workers (``None``
    when unset: every GPU is visible and ``cuda:N`` is GPU N). The result sets
    ``CUDA_VISIBLE_DEVICES`` to that one GPU (``""`` for ``"cpu"``: no GPU at all) and
    ``POPTUNE_DEVICE`` to the device's name inside the worker (``"cuda:0"`` or ``"cpu"``).

    Raises:
        ValueError: for invalid devices, or a ``cuda:N`` that ``visible`` does not list.

    Example:
        >>> device_environment(["cuda:0", "cuda:1"], 3)
        {'CUDA_VISIBLE_DEVICES': '1', 'POPTUNE_DEVICE': 'cuda:0'}
        >>> device_environment(["cuda:1"], 0, visible="4,6")
        {'CUDA_VISIBLE_DEVICES': '6', 'POPTUNE_DEVICE': 'cuda:0'}
    """
    devices = parse_devices(devices)
    if isinstance(worker_index, bool) or not isinstance(worker_index, int) or worker_index < 0:
        raise invalid("worker_index", "an int >= 0", worker_index, "device_environment")
    device = devices[worker_index % len(devices)]
    if device == "cpu":
        return {CUDA_VISIBLE_DEVICES: "", POPTUNE_DEVICE: "cpu"}
    index = int(device.removeprefix("cuda:"))
    if visible is None:
        return {CUDA_VISIBLE_DEVICES: str(index), POPTUNE_DEVICE: "cuda:0"}
    listed = [entry.strip() for entry in visible.split(",")] if visible.strip() else []
    if index >= len(listed):
        raise ValueError(
            f"The device {device!r} is not visible to this process: {CUDA_VISIBLE_DEVICES}="
            f"{visible!r} lists {len(listed)} GPU(s), numbered cuda:0 to cuda:{len(listed) - 1}"
            " in this process. Pass devices among those, or 'cpu'."
            if listed
            else f"The device {device!r} is not visible to this process: "
            f"{CUDA_VISIBLE_DEVICES}={visible!r} hides every GPU. Pass 'cpu', or unset it."
        )
    return {CUDA_VISIBLE_DEVICES: listed[index], POPTUNE_DEVICE: "cuda:0"}


def idle_devices(devices: Sequence[str], workers: int) -> list[str]:
    """The devices that none of ``workers`` worker processes gets (sorted).

    Example:
        >>> idle_devices(["cuda:0", "cuda:1", "cuda:2"], 2)
        ['cuda:2']
    """
    return sorted(set(devices) - set(devices[:workers]))


def apply_environment(environment: Mapping[str, str]) -> None:
    """Set ``environment`` in ``os.environ`` of this process (a worker process, at its start).

    Only for a process that runs one worker and has not initialised CUDA yet: CUDA ignores
    later changes of ``CUDA_VISIBLE_DEVICES``.
    """
    os.environ.update(environment)


def cuda_initialised() -> bool:
    """Whether this process has initialised CUDA through PyTorch (never imports torch).

    A process forked from one that has cannot use CUDA, whatever its environment says.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except (AttributeError, RuntimeError):
        return False


def _hint(device: object) -> str | None:
    """A suggestion for near misses: ``"cuda"`` and plain ints."""
    if device == "cuda":
        return "Write 'cuda:0' for the first GPU."
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return f"Write 'cuda:{device}'."
    return None
