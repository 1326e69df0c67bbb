"""The Hugging Face hub as SAE loading sees it: is the user offline, and which exceptions mean "not reachable"."""

from __future__ import annotations

import importlib
import os


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (in the environment, or as huggingface_hub read it at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with sae_lens
        return False


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the hub could not be reached or the file is not in the offline cache."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover
        pass
    optional = (
        ("httpx", "TransportError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
    )
    for module, name in optional:
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
