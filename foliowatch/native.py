"""Loading the optional compiled modules of the central services (the simulator's
encoder, the pipeline's decoder): each is built by ``scripts/bootstrap.sh`` into the
central virtualenv only, states the format version it runs, and can be turned off by an
environment variable so that benchmarks measure both paths in one run."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Optional, Tuple


def load_native(name: str, env: str, off: str, version_attr: str, version: int,
                what: str, source: str) -> Tuple[Optional[ModuleType], str]:
    """The compiled module ``name``, or None and the reason it is not used: ``env`` set
    to ``off``, not installed, or built for another format than ``version`` (its
    ``version_attr``). ``what`` names it in the reason (e.g. "the native encoder");
    ``source`` is its folder in the repository."""
    if os.environ.get(env, "native") == off:
        return None, f"{env}={off}"
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        return None, (f"{what} is not installed ({e}); run scripts/bootstrap.sh "
                      f"to build it ({source})")
    built = getattr(mod, version_attr, None)
    if built != version:
        return None, (f"{what} was built for {version_attr.lower().replace('_', ' ')} {built}, "
                      f"this code writes {version}; rebuild it with scripts/bootstrap.sh")
    return mod, ""


_said: set = set()
_said_lock = threading.Lock()


def say_once(log: logging.Logger, message: str, reason: str) -> None:
    """Warn ``message % reason`` once per process for each (message, reason): why a
    compiled module is not used, said on the first call and not on every batch."""
    with _said_lock:
        if (message, reason) in _said:
            return
        _said.add((message, reason))
    log.warning(message, reason)
