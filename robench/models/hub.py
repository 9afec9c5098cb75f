"""Model zoos offline: fail in one line within seconds, not after a minute of the hub libraries' retries.

``model=timm model.pretrained=true`` asks the Hugging Face hub (``huggingface_hub``) for weights it does
not have cached, and ``model=torchvision model.weights=ENUM`` asks ``torch.hub`` (which downloads from
the weights' URL, printing "Downloading ..." first). Without a network the first retries for about 50 s
with a warning per attempt, the second prints its download line and then fails. So before asking them,
robench decides whether the hub can be reached:

* offline when the user says so: ``HF_HUB_OFFLINE=1`` (Hugging Face's own switch) or ``ROBENCH_OFFLINE=1``
  (both hubs);
* else offline when a TCP connection to the hub's host (port 443) does not open within
  :data:`PROBE_SECONDS` (once per host and process).

Offline, the hub libraries are told so before they are asked (``HF_HUB_OFFLINE``: cached files only, no
request), and weights that are not cached fail at once in one line saying where the cache is and what to
do. Online, nothing changes.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator

#: seconds a connection to a hub's host may take before robench calls it offline
PROBE_SECONDS = 3.0

HF_HOST = "huggingface.co"


def _true(v) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def declared_offline(hf: bool = False) -> bool:
    """The user said so: ``ROBENCH_OFFLINE=1``, or for the Hugging Face hub ``HF_HUB_OFFLINE=1``."""
    return _true(os.environ.get("ROBENCH_OFFLINE")) or (hf and _true(os.environ.get("HF_HUB_OFFLINE")))


@functools.lru_cache(maxsize=None)
def reachable(host: str, port: int = 443, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (once per process)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline(host: str, hf: bool = False) -> bool:
    """Whether robench treats the hub at ``host`` as unreachable (declared, or the probe failed)."""
    return declared_offline(hf) or not reachable(host)


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Hugging Face's libraries in offline mode for the block (cached files only, no request, no retry):
    the environment variable for code that reads it later, the constant for code that read it already."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as c
    except ImportError:
        c = None
    was = getattr(c, "HF_HUB_OFFLINE", None)
    if c is not None:
        c.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if c is not None:
            c.HF_HUB_OFFLINE = was
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def first_words(text: str, n: int = 160) -> str:
    """The first line of ``text``, at most about ``n`` characters, cut at a word boundary ("..." added)."""
    line = (str(text).strip().splitlines() or [""])[0]
    if len(line) <= n:
        return line
    return line[:n].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
