"""The start-up hook that makes ``freerouter/auto`` work in litellm and aider with no setup.

``litellm_freerouter_autoload.pth`` runs at every interpreter start in the environment the
package is installed in, so it must be cheap and must never fail.  It loads *this file* by path
(importing the package would import litellm, which takes a second or more) and calls
:func:`install`, which puts a finder on ``sys.meta_path``.  The finder does nothing until one of
two modules is imported, then acts once that module has finished executing:

* ``litellm``: import ``litellm_freerouter``, which registers the provider and its model info;
* ``aider.models``: tell aider the context window, the zero cost and default edit settings of
  ``freerouter/auto`` and ``freerouter/hedged`` (the former's weak model), so that aider neither
  warns about an unknown model nor tries to download metadata for it.  A
  user's ``.aider.model.settings.yml`` and ``.aider.model.metadata.json`` still win: aider reads
  them later, and their entries replace these.

If either module is already imported when :func:`install` runs, its step runs at once.  Every
step is idempotent (the ``.pth`` may be processed twice, and this file may be loaded both by path
and as ``litellm_freerouter.autoload``), imports only the standard library until it acts, and
logs instead of raising: a broken plugin must never break ``import litellm`` or aider.

``FREEROUTER_DISABLE_AUTOLOAD=1`` (or true/yes/on) is checked by the ``.pth`` line itself: the
one place besides ``config`` that reads the environment, because ``config`` cannot be imported
without litellm.
"""

from __future__ import annotations

import sys

# Interpreter start is on the clock: nothing beyond ``sys`` is imported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

__all__ = ["HEDGED_MODEL_NAME", "MODEL_INFO", "MODEL_NAME", "install", "installed"]

MODEL_NAME = "freerouter/auto"
HEDGED_MODEL_NAME = "freerouter/hedged"

# A copy of provider.MODEL_INFO (a test pins that they are equal): the provider module imports
# litellm, and aider.models must be patched without importing it.
MODEL_INFO: dict[str, Any] = {
    "max_tokens": 32768,
    "max_input_tokens": 131072,
    "max_output_tokens": 32768,
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "cache_creation_input_token_cost": 0.0,
    "cache_read_input_token_cost": 0.0,
    "litellm_provider": "freerouter",
    "mode": "chat",
    "supports_function_calling": True,
    "supports_tool_choice": True,
    "supports_vision": True,
    "supports_response_schema": True,
    "supports_reasoning": True,
    "supports_assistant_prefill": True,
}

# The settings aider gives the capable free models it knows (deepseek-chat-v3:free and the
# like). aider's weak model writes a commit message after every edit and summarises long chats:
# with freerouter/auto that would be a second race of three per prompt, so it is
# freerouter/hedged (one request, a second only when the first runs late). The editor model
# defaults to the main model itself.
AIDER_SETTINGS: dict[str, dict[str, Any]] = {
    MODEL_NAME: {
        "edit_format": "diff",
        "use_repo_map": True,
        "examples_as_sys_msg": True,
        "weak_model_name": HEDGED_MODEL_NAME,
    },
    HEDGED_MODEL_NAME: {
        "edit_format": "diff",
        "use_repo_map": True,
        "examples_as_sys_msg": True,
    },
}

# Marks our finder, whichever copy of this file made it.
_MARK = "_litellm_freerouter_autoload"


def _log_failure(step: str) -> None:
    import logging

    logging.getLogger("litellm_freerouter").warning(
        "litellm-freerouter autoload: %s failed; freerouter/auto may be unknown here "
        "(set FREEROUTER_DISABLE_AUTOLOAD=1 to turn the hook off)",
        step,
        exc_info=True,
    )


def _initializing(module: ModuleType | None) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _on_litellm(litellm: ModuleType) -> None:
    """Register the provider with the litellm that has just been imported."""
    package = sys.modules.get("litellm_freerouter")
    if package is not None and _initializing(package):
        return  # litellm_freerouter is importing litellm; its __init__ registers at its end
    import importlib

    importlib.import_module("litellm_freerouter").register()


def _on_aider_models(models: ModuleType) -> None:
    """Describe freerouter/auto to aider the way its own tables describe known models."""
    settings = models.MODEL_SETTINGS
    for name, fields in AIDER_SETTINGS.items():
        models.model_info_manager.local_model_metadata.setdefault(name, dict(MODEL_INFO))
        if not any(getattr(entry, "name", None) == name for entry in settings):
            settings.append(models.ModelSettings(name=name, **fields))


_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "litellm": _on_litellm,
    "aider.models": _on_aider_models,
}


def _run(name: str, module: ModuleType) -> None:
    try:
        _HOOKS[name](module)
    except Exception:
        _log_failure(f"preparing {name}")


class _PostImportFinder:
    """A ``sys.meta_path`` finder that finds nothing itself.

    For a watched module it asks the other finders for the spec and wraps the loader's
    ``exec_module`` so that the hook runs after the module's code; for everything else it
    steps aside at the cost of one dict lookup.
    """

    _litellm_freerouter_autoload = True

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _HOOKS:
            return None
        try:
            spec = _find_elsewhere(fullname, path, target)
            if spec is not None and _wrap_loader(spec, fullname):
                return spec
        except Exception:
            _log_failure(f"watching the import of {fullname}")
        return None  # the import system carries on as if we were not here

    def invalidate_caches(self) -> None:
        return None


def _find_elsewhere(
    fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for finder in list(sys.meta_path):
        if getattr(finder, _MARK, False):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec: ModuleSpec | None = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _wrap_loader(spec: ModuleSpec, fullname: str) -> bool:
    """Run the hook after the loader executes the module; False if this loader cannot be."""
    loader = spec.loader
    real_exec = getattr(loader, "exec_module", None)
    if loader is None or real_exec is None:
        return False
    # Loader instances are made per module by the path finders, so patching the instance
    # (rather than wrapping it) keeps isinstance checks and resource readers working.
    had_own = "exec_module" in getattr(loader, "__dict__", {})

    def exec_module(module: ModuleType) -> None:
        try:
            real_exec(module)
        finally:
            try:
                if had_own:
                    loader.exec_module = real_exec  # type: ignore[method-assign]
                else:
                    del loader.exec_module
            except Exception:
                pass
        _run(fullname, module)

    try:
        loader.exec_module = exec_module  # type: ignore[method-assign]
    except Exception:
        return False
    return True


def installed() -> bool:
    """Whether a post-import finder from this file (any copy of it) is on ``sys.meta_path``."""
    return any(getattr(finder, _MARK, False) for finder in sys.meta_path)


def install() -> None:
    """Put the post-import finder in place, once; act at once on modules already imported."""
    try:
        if not installed():
            sys.meta_path.insert(0, _PostImportFinder())
        for name in _HOOKS:
            module = sys.modules.get(name)
            if module is not None and not _initializing(module):
                _run(name, module)
    except Exception:
        _log_failure("installing the import hook")
