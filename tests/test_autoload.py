"""The ``.pth`` start-up hook: litellm and aider learn freerouter/auto on import, at no cost.

Each behaviour is observed in a fresh interpreter (``sys.executable``), where the hook installed
with the package has run at start-up the way it does for a user.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

from litellm_freerouter import autoload, provider

REPO = Path(__file__).resolve().parents[1]
HOOK_NAME = "litellm_freerouter_autoload.pth"
HOOK = REPO / HOOK_NAME
WARNING = "litellm-freerouter autoload"

# Prints what the hook did, as JSON on the last line of stdout.
REPORT = textwrap.dedent(
    """
    import json, sys
    def report(**extra):
        litellm = sys.modules.get("litellm")
        state = {
            "finders": sum(1 for f in sys.meta_path
                           if getattr(f, "_litellm_freerouter_autoload", False)),
            "hook_loaded": "_litellm_freerouter_autoload" in sys.modules,
            "package_imported": "litellm_freerouter" in sys.modules,
            "litellm_imported": litellm is not None,
        }
        if litellm is not None:
            state["providers"] = [e.get("provider") for e in litellm.custom_provider_map]
            state["model_known"] = "freerouter/auto" in litellm.model_cost
            state["loader_restored"] = "exec_module" not in vars(litellm.__spec__.loader)
        state.update(extra)
        print(json.dumps(state))
    """
)


def python(
    code: str,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    pythonpath: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """Run ``code`` (after REPORT's helpers) in a fresh interpreter; its report and stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FREEROUTER_")}
    environ.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1")
    environ.pop("PYTHONPATH", None)
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", REPORT + textwrap.dedent(code)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "Error processing line" not in done.stderr, done.stderr  # site's .pth failure note
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def site_dir_with_hook(tmp_path: Path) -> Path:
    """A directory holding a copy of this tree's hook, for ``site.addsitedir``."""
    directory = tmp_path / "second-site"
    directory.mkdir()
    shutil.copy(HOOK, directory / HOOK_NAME)
    return directory


def test_installed_hook_is_this_trees() -> None:
    """The environment running the tests has this tree's hook installed (else reinstall)."""
    dirs = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    installed = [Path(d) / HOOK_NAME for d in dirs if (Path(d) / HOOK_NAME).exists()]
    assert installed, f"{HOOK_NAME} is not installed: pip install -e ."
    for path in installed:
        assert path.read_text() == HOOK.read_text(), f"{path} is stale: pip install -e ."


def test_hook_is_a_single_import_line() -> None:
    """site runs only lines starting with 'import', one at a time: the hook is one such line."""
    lines = HOOK.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import sys; exec(")


def test_model_info_is_the_providers() -> None:
    """What aider is told about freerouter/auto is what litellm is told."""
    assert autoload.MODEL_NAME == provider.MODEL_NAME
    assert autoload.HEDGED_MODEL_NAME == provider.HEDGED_MODEL_NAME
    assert autoload.MODEL_INFO == provider.MODEL_INFO


def test_interpreter_start_imports_neither_litellm_nor_the_package(tmp_path: Path) -> None:
    """The hook at start-up only installs a finder: litellm and our package stay unimported."""
    state, _ = python(
        "report(loaded=sorted(m for m in sys.modules if m.startswith(('litellm', 'aider'))))",
        tmp_path,
    )
    assert state["finders"] == 1
    assert state["hook_loaded"]
    assert state["loaded"] == []


def test_importing_litellm_registers_freerouter(tmp_path: Path) -> None:
    """A bare ``import litellm`` makes freerouter/auto usable, and litellm's loader is left as
    it was found."""
    state, stderr = python(
        """
        import litellm
        from litellm.utils import get_llm_provider
        report(resolved=get_llm_provider("freerouter/auto")[1])
        """,
        tmp_path,
    )
    assert state["package_imported"]
    assert state["providers"] == ["freerouter"]
    assert state["model_known"]
    assert state["resolved"] == "freerouter"
    assert state["loader_restored"]
    assert WARNING not in stderr


def test_importing_the_package_first_registers_once_without_complaint(tmp_path: Path) -> None:
    """``import litellm_freerouter`` imports litellm inside its own import: the hook steps
    aside and the package registers itself, once."""
    state, stderr = python("import litellm_freerouter, litellm\nreport()", tmp_path)
    assert state["providers"] == ["freerouter"]
    assert state["model_known"]
    assert WARNING not in stderr


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_disable_switch_keeps_the_hook_out(tmp_path: Path, value: str) -> None:
    """FREEROUTER_DISABLE_AUTOLOAD=1/true/yes/on (any case) installs nothing at all."""
    state, _ = python("report()", tmp_path, env={"FREEROUTER_DISABLE_AUTOLOAD": value})
    assert state["finders"] == 0
    assert not state["hook_loaded"]


def test_disabled_hook_leaves_litellm_alone(tmp_path: Path) -> None:
    """With the switch on, importing litellm registers nothing."""
    state, _ = python(
        "import litellm\nreport()", tmp_path, env={"FREEROUTER_DISABLE_AUTOLOAD": "1"}
    )
    assert not state["package_imported"]
    assert state["providers"] == []


@pytest.mark.parametrize("value", ["", "0", "no"])
def test_other_switch_values_keep_the_hook(tmp_path: Path, value: str) -> None:
    """Only the documented values disable the hook."""
    state, _ = python("report()", tmp_path, env={"FREEROUTER_DISABLE_AUTOLOAD": value})
    assert state["finders"] == 1


def test_processing_the_hook_twice_is_harmless(tmp_path: Path) -> None:
    """A second run of the .pth line and a second copy of the module change nothing: one
    finder, one registration."""
    second_site = str(site_dir_with_hook(tmp_path))
    state, stderr = python(
        f"""
        import site
        site.addsitedir({second_site!r})
        import litellm
        site.addsitedir({second_site!r})
        import litellm_freerouter.autoload
        litellm_freerouter.autoload.install()
        report()
        """,
        tmp_path,
    )
    assert state["finders"] == 1
    assert state["providers"] == ["freerouter"]
    assert WARNING not in stderr


def test_modules_imported_before_the_hook_are_prepared_at_once(tmp_path: Path) -> None:
    """If litellm and aider.models were imported before the hook installs, it acts on them at
    once, without overriding what the user already told aider."""
    fake_aider(tmp_path)
    state, stderr = python(
        f"""
        import os, site
        import litellm, aider.models
        aider.models.model_info_manager.local_model_metadata["freerouter/auto"] = dict(
            max_input_tokens=4096)
        before = [e.get("provider") for e in litellm.custom_provider_map]
        del os.environ["FREEROUTER_DISABLE_AUTOLOAD"]
        site.addsitedir({str(site_dir_with_hook(tmp_path))!r})
        metadata = aider.models.model_info_manager.local_model_metadata["freerouter/auto"]
        settings = [s.edit_format for s in aider.models.MODEL_SETTINGS
                    if s.name == "freerouter/auto"]
        report(before=before, context=metadata["max_input_tokens"], settings=settings)
        """,
        tmp_path,
        env={"FREEROUTER_DISABLE_AUTOLOAD": "1"},
        pythonpath=tmp_path / "fake",
    )
    assert state["before"] == []
    assert state["providers"] == ["freerouter"]
    assert state["finders"] == 1
    assert state["context"] == 4096
    assert state["settings"] == ["diff"]
    assert WARNING not in stderr


# The parts of aider 0.86.2's aider/models.py that the hook touches; the e2e test runs the real one.
FAKE_AIDER_MODELS = """
from dataclasses import dataclass

@dataclass
class ModelSettings:
    name: str
    edit_format: str = "whole"
    use_repo_map: bool = False
    examples_as_sys_msg: bool = False
    weak_model_name: str | None = None

MODEL_SETTINGS = [ModelSettings(name="gpt-4o", edit_format="diff")]

class ModelInfoManager:
    def __init__(self):
        self.local_model_metadata = {}

model_info_manager = ModelInfoManager()
"""


def fake_aider(tmp_path: Path) -> None:
    package = tmp_path / "fake" / "aider"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(FAKE_AIDER_MODELS)


def test_importing_aider_models_describes_freerouter(tmp_path: Path) -> None:
    """Once aider.models is imported it knows the window and zero cost of freerouter/auto and
    of freerouter/hedged, its weak model, and has edit settings for both, without importing
    litellm (aider defers that on purpose)."""
    fake_aider(tmp_path)
    state, stderr = python(
        """
        import aider.models as models
        sys.modules["_litellm_freerouter_autoload"].install()  # again: still one entry each
        report(
            metadata=models.model_info_manager.local_model_metadata,
            settings=[vars(s) for s in models.MODEL_SETTINGS if s.name.startswith("freerouter")],
        )
        """,
        tmp_path,
        pythonpath=tmp_path / "fake",
    )
    assert state["metadata"] == {
        "freerouter/auto": provider.MODEL_INFO,
        "freerouter/hedged": provider.MODEL_INFO,
    }
    same = {"edit_format": "diff", "use_repo_map": True, "examples_as_sys_msg": True}
    assert state["settings"] == [
        {"name": "freerouter/auto", **same, "weak_model_name": "freerouter/hedged"},
        {"name": "freerouter/hedged", **same, "weak_model_name": None},
    ]
    assert not state["litellm_imported"]
    assert WARNING not in stderr


def shadow_package(tmp_path: Path, *, init: str, autoload_source: str | None) -> Path:
    """A broken ``litellm_freerouter`` ahead of the real one on PYTHONPATH."""
    root = tmp_path / "shadow"
    package = root / "litellm_freerouter"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    if autoload_source is not None:
        (package / "autoload.py").write_text(autoload_source)
    return root


BROKEN = 'raise RuntimeError("broken on purpose")\n'


@pytest.mark.parametrize(
    "autoload_source",
    [BROKEN, None, "install = 42\n"],
    ids=["autoload-raises", "autoload-missing", "install-not-callable"],
)
def test_hook_never_breaks_interpreter_start(tmp_path: Path, autoload_source: str | None) -> None:
    """However broken the package is, the .pth line raises nothing and the interpreter starts
    quietly; litellm still imports."""
    shadow = shadow_package(tmp_path, init=BROKEN, autoload_source=autoload_source)
    state, stderr = python("import litellm\nreport()", tmp_path, pythonpath=shadow)
    assert state["finders"] == 0
    assert state["providers"] == []
    assert stderr == ""


def test_broken_package_never_breaks_importing_litellm(tmp_path: Path) -> None:
    """If the hook is in place but the package fails to import, ``import litellm`` still
    succeeds, with a warning naming the switch that turns the hook off."""
    shadow = shadow_package(
        tmp_path, init=BROKEN, autoload_source=(REPO / "litellm_freerouter/autoload.py").read_text()
    )
    state, stderr = python("import litellm\nreport()", tmp_path, pythonpath=shadow)
    assert state["finders"] == 1
    assert state["providers"] == []
    assert state["loader_restored"]
    assert WARNING in stderr
    assert "FREEROUTER_DISABLE_AUTOLOAD" in stderr
