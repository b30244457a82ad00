"""The package's public surface and its import-time promises."""

from __future__ import annotations

import subprocess
import sys

import litellm

import litellm_freerouter


def test_exported_members() -> None:
    """__all__ is the documented public API, and every name in it exists."""
    assert litellm_freerouter.__all__ == [
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
    for name in litellm_freerouter.__all__:
        assert hasattr(litellm_freerouter, name)


def test_registration_is_idempotent() -> None:
    """Registering again adds no second provider entry; model info says zero cost."""
    litellm_freerouter.register()
    litellm_freerouter.register()
    entries = [e for e in litellm.custom_provider_map if e["provider"] == "freerouter"]
    assert len(entries) == 1
    assert "freerouter" in litellm.provider_list
    for name in ("freerouter/auto", "freerouter/hedged"):
        info = litellm.get_model_info(name)
        assert info["input_cost_per_token"] == 0 and info["output_cost_per_token"] == 0
        assert info["max_input_tokens"] == litellm_freerouter.MODEL_INFO["max_input_tokens"]


def test_import_touches_no_network_and_starts_nothing() -> None:
    """Importing the package opens no socket and starts no thread or loop."""
    code = (
        "import socket, threading\n"
        "def refuse(*a, **k): raise SystemExit('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "before = threading.active_count()\n"
        "import litellm_freerouter, litellm_freerouter.engine as e\n"
        "assert e._engine is None, 'engine started at import'\n"
        "assert 'freerouter' in __import__('litellm').provider_list\n"
        "print('ok')\n"
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "FREEROUTER_DISABLE_AUTOLOAD": "1",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
