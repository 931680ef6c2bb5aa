"""Which code made a result: recorded in every run's summary so that reports can say it."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """The git commit of this package's checkout (``+dirty`` with uncommitted changes), else the
    installed package version (``sparse-reg 0.1.0``)."""
    here = Path(__file__).resolve().parent
    try:
        commit = _git(here, "rev-parse", "--short=10", "HEAD")
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return f"sparse-reg {metadata.version('sparse-reg')}"
        except metadata.PackageNotFoundError:
            return "unknown"


@functools.cache
def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; elsewhere what
    ``platform`` says, and no flags)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break  # the first core's block is enough
    except OSError:  # not Linux
        pass
    return model, flags


def machine() -> str:
    """The machine a run ran on, as its summary records it: CPU model and core count, and the
    accelerator where JAX uses one ("AMD EPYC (2 cores)", "... (16 cores), NVIDIA H100 80GB HBM3").
    Wall times are comparable only between runs of the same machine (hosts differ ~2x)."""
    model, _ = cpu_info()
    text = f"{model} ({os.cpu_count()} cores)"
    try:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            text += f", {device.device_kind}"
    except (ImportError, RuntimeError):  # no JAX backend to ask: the CPU alone
        pass
    return text


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()


def wall_seconds(rows: list[dict]) -> float:
    """Training wall time from a metrics log's ``wall_s`` column (seconds since the start of each
    invocation): the sum of each invocation's last value, so resumed runs count every part."""
    total, previous = 0.0, 0.0
    for row in rows:
        wall = float(row.get("wall_s", 0.0))
        if wall < previous:  # a resumed invocation started its clock again
            total += previous
        previous = wall
    return total + previous


def format_duration(seconds: float, decimals: int = 0) -> str:
    """"45 s", "37 min", "4.7 h": seconds up to 90 s, minutes up to 90 min, hours beyond.

    ``decimals`` applies to minutes (estimates read best rounded, measured times with one decimal).
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.{decimals}f} min"
    return f"{seconds / 3600:.1f} h"


def parse_count(text: str) -> int:
    """Counts as people write them: ``10k``, ``1M``, ``200_000``, ``2.5k``; ValueError otherwise."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1]) * scale) if scale > 1 else int(t)
