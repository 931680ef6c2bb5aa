"""JAX's persistent compilation cache, on for training runs unless the user says otherwise.

Every run compiles the same few programs (the update scan, the mask refresh, the policy):
seconds each on a CPU, paid again by every seed process, sweep worker and resumed run. With
the cache, a process whose programs another one already compiled loads them from disk (an
IQL update scan: ~8 s to compile, ~1.5 s to load, measured on the 2-core CPU).

``SPARSE_REG_JAX_CACHE`` chooses: unset → ``$XDG_CACHE_HOME/sparse-reg/jax`` (or
``~/.cache/sparse-reg/jax``); a path → that directory; ``off`` → no cache. A cache directory
the user already gave JAX (``jax.config``, ``JAX_COMPILATION_CACHE_DIR``) is left as it is.
JAX keys entries by program, compiler options and versions, so an entry is only ever reused
for the identical computation.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "SPARSE_REG_JAX_CACHE"
DISABLED = ("0", "off", "false", "no", "none")


def cache_directory() -> Path | None:
    """Where the cache should be, from ``SPARSE_REG_JAX_CACHE``; None when it is turned off."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in DISABLED:
        return None
    if setting:
        return Path(setting).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparse-reg" / "jax"


def enable_compilation_cache() -> Path | None:
    """Point JAX at the cache directory (idempotent); returns the directory in use, or None.

    Programs compiled before the call are not written to the cache, later ones are (JAX 0.10):
    call it before the programs worth caching (the CLI and
    :func:`sparse_reg.training.trainer.train_group` do).
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    directory = cache_directory()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home, full disk: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory
