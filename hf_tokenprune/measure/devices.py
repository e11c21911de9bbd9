"""The machine a measurement runs on: devices and dtypes as the command line names them, waiting for a device,
the CPU and accelerator names, library versions and how busy the machine is.

No device name appears in the code that runs models: ``--device`` names are parsed here only.
"""

from __future__ import annotations

from typing import Any

from .._lazy import LazyModule

torch = LazyModule("torch")  # imported when first used: the CLI's help and bad-input errors need no torch


def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device``; a no-op on the CPU (no device name appears here)."""
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "synchronize"):
        module.synchronize(device)
    else:
        torch.accelerator.synchronize(device)


DEVICES = ("auto", "cpu", "cuda", "npu")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> the torch dtype's name


def _import_torch_npu() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the Ascend backend with torch)
    except ImportError:
        return False
    return True


def parse_device(name: str) -> torch.device:
    """The torch device for the ``--device`` option; ``auto`` prefers an available accelerator."""
    if name not in DEVICES:
        raise ValueError(f"--device {name!r} is not supported; allowed: {list(DEVICES)}.")
    if name in ("auto", "npu"):
        has_npu = _import_torch_npu()
        if name == "npu" and not has_npu:
            raise ValueError("--device npu needs torch_npu (Ascend), which is not installed.")
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        return accelerator if accelerator is not None else torch.device("cpu")
    if name != "cpu":
        module = getattr(torch, name, None)
        if module is None or not module.is_available():
            raise ValueError(f"--device {name} was asked for, but no {name} device is available here.")
    return torch.device(name)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not supported; allowed: {list(DTYPES)}.")
    return getattr(torch, DTYPES[name])


def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC" (from /proc/cpuinfo on Linux, else `platform`)."""
    import platform

    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A readable name: the CPU model and its core count, or the accelerator's name."""
    import os

    if device.type == "cpu":
        return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "get_device_name"):
        return str(module.get_device_name(device))
    return str(device)


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, device name and library versions."""
    import os
    import platform

    import transformers

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device_name(device if device is not None else torch.device("cpu")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def machine_load() -> float | None:
    """The 1-minute load average per core (None where the system does not report it)."""
    import os

    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def _busy_seconds() -> float | None:
    """CPU seconds every process has used since boot (user, nice, system, irq, softirq and steal time: a VM's
    stolen time is lost to us as well), from ``/proc/stat``; None where the system has no such file."""
    import os

    try:
        with open("/proc/stat") as file:
            fields = [int(value) for value in file.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
    """How busy other processes kept the machine while a measurement ran: the CPU time every process used minus
    this process's own, per second of wall clock and per core (0: nothing else ran; 0.5 on 2 cores: another process
    kept one core busy throughout). ``value`` is None until `stop`, and where the system does not report CPU time.

        load = OthersLoad().start()
        ...  # the timed rounds
        load.stop().value
    """

    def __init__(self):
        self.value: float | None = None
        self._start: tuple[float, float, float | None] | None = None

    @staticmethod
    def _now() -> tuple[float, float, float | None]:
        import os
        import time

        times = os.times()
        return time.monotonic(), times.user + times.system, _busy_seconds()

    def start(self) -> OthersLoad:
        self._start = self._now()
        return self

    def stop(self) -> OthersLoad:
        import os

        if self._start is None:
            raise RuntimeError("OthersLoad.stop() before start().")
        (wall0, own0, busy0), (wall1, own1, busy1) = self._start, self._now()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return self
        others = (busy1 - busy0) - (own1 - own0)
        self.value = max(0.0, others / (wall1 - wall0) / (os.cpu_count() or 1))
        return self


def code_version(root=None) -> str:
    """The commit of this hf_tokenprune checkout (or of ``root``), with ``-dirty`` where tracked files outside
    ``docs/`` differ from it (saved results and rendered pages, which a measurement writes there, do not make the code
    dirty), or the package version where it is not a git checkout."""
    import subprocess
    from pathlib import Path

    from .. import __version__

    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    if (root / ".git").exists():
        git = ["git", "-C", str(root)]
        try:
            head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
            changed = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if head.returncode == 0 and head.stdout.strip() and changed.returncode == 0:
                return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"hf_tokenprune {__version__}"


def provenance(command: str | None = None) -> dict[str, Any]:
    """Where a saved result comes from: the command (default: this process's), the code's commit, the UTC date and
    time, and the machine; every file of measured numbers carries it, and the docs print it under each table."""
    import datetime
    import shlex
    import sys
    from pathlib import Path

    if command is None:
        argv = list(sys.argv)
        if argv and argv[0].endswith(".py"):  # python examples/x.py ...
            argv = ["python", argv[0], *argv[1:]]
        elif argv:  # a console script: its name
            argv[0] = Path(argv[0]).name
        command = shlex.join(argv)
    return {
        "command": command,
        "commit": code_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
    }
