"""Whether the Hugging Face Hub can be reached, checked once and quickly.

Without this, every failed Hub lookup retries for about 25 seconds before giving up. When the Hub
is unreachable, offline mode is switched on so that transformers and datasets read only the local
cache and fail at once.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when offline mode is off and a TCP connection to the Hub's endpoint opens."""
    if offline_requested():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError as err:
        logger.info("Hugging Face Hub unreachable (%s): using the local cache only", err)
        return False


def use_local_cache_only() -> None:
    """Switch transformers, huggingface_hub and datasets to offline mode, also if already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Not imported here when not yet imported (0.4 s): the variables above set it at import.
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def prepare() -> bool:
    """Check the Hub once; go offline when it cannot be reached. Returns whether it is reachable."""
    reachable = hub_reachable()
    if not reachable:
        use_local_cache_only()
    return reachable
