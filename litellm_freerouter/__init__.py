"""freerouter/auto: OpenRouter's free models raced for LiteLLM.

Importing this package registers the provider with litellm (idempotently, with no I/O).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .catalog import FreeModel
from .config import Settings, load_settings
from .errors import (
    AllModelsFailed,
    CatalogUnavailable,
    ConfigurationError,
    FreeRouterError,
    MissingKeyError,
    NoCapableModel,
    NoModelAvailable,
    StreamStalled,
    UpstreamError,
)
from .events import subscribe
from .provider import (
    HEDGED_MODEL_NAME,
    MODEL_INFO,
    MODEL_NAME,
    FreeRouterLLM,
    handler,
    register,
)

try:
    __version__ = version("litellm-freerouter")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

register()

__all__ = [
    "HEDGED_MODEL_NAME",
    "MODEL_INFO",
    "MODEL_NAME",
    "AllModelsFailed",
    "CatalogUnavailable",
    "ConfigurationError",
    "FreeModel",
    "FreeRouterError",
    "FreeRouterLLM",
    "MissingKeyError",
    "NoCapableModel",
    "NoModelAvailable",
    "Settings",
    "StreamStalled",
    "UpstreamError",
    "__version__",
    "handler",
    "load_settings",
    "subscribe",
]
