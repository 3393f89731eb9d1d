"""The floors of the house (docs/architecture.md): no import runs back up a floor.

Every `import` in src/pasture, at module level and inside functions, is read from the
syntax tree and mapped to the floor of the module it names; an edge the table below
does not allow fails the test, naming the file, the line and the import.
"""

import ast
from pathlib import Path

import pasture

SRC = Path(pasture.__file__).parent
GROUND = {"pasture", "pasture.errors", "pasture.config", "pasture.runtime", "pasture.documents", "pasture.cli_args"}
BASE = {"model", "tokenizer", "data"}  # floor 1: each on the ground only, never on each other
STAGES = {"post", "eval", "serve", "scaling", "safety", "report", "runs", "baselines"}  # floor 3: above the training core
BELOW_STAGES = {"ground", "model", "tokenizer", "train"}

# floor name -> the floors its modules may import (a floor may always import itself)
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    **{name: {"ground"} for name in BASE},
    "train": {"ground", "model", "tokenizer"},
    **{name: BELOW_STAGES | {"runs"} for name in STAGES},
    "runs": set(BELOW_STAGES),  # the loader of runs and checkpoints every stage opens models with
    # the engine samples for evaluation and rejection sampling; evaluation scores sweeps and post-training,
    # and its tables go into the report card
    "serve": BELOW_STAGES | {"runs", "safety"},
    "eval": BELOW_STAGES | {"runs", "serve", "safety"},
    "post": BELOW_STAGES | {"runs", "serve", "eval"},
    "scaling": BELOW_STAGES | {"runs", "eval"},
    "report": BELOW_STAGES | {"runs", "eval"},  # the report card renders eval's results tables
    "commands": {"ground", "train", "speedrun", *BASE, *STAGES},
    "top": {"ground", "commands", "train", *BASE, *STAGES},
}


def floor_of(module: str) -> str:
    """The floor of a module of pasture, by its dotted name."""
    if module in GROUND:
        return "ground"
    if module == "pasture.cli":
        return "top"
    if module == "pasture.runs":
        return "runs"
    parts = module.split(".")
    if parts[-1] in ("cli", "speedrun_cli") or module == "pasture.speedrun":
        return "commands"
    package = parts[1]
    if package in ALLOWED:
        return package
    raise AssertionError(f"{module} stands on no floor: add its package to tests/test_layers.py and "
                         "docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    return imports_in(path.read_text(), package)


def imports_in(code: str, package: str) -> list[tuple[int, str]]:
    """(line, imported pasture module) for every import in `code` of a module of `package`,
    inside functions too, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pasture import runs` names a module; `from pasture.x import f` names x
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == "pasture" or name.startswith("pasture.")]


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (SRC.parent / relative).with_suffix(".py").is_file() or (SRC.parent / relative / "__init__.py").is_file()


def test_no_import_runs_up_a_floor():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        source = floor_of(module_name(path))
        for line, target in imports_of(path):
            floor = floor_of(target)
            if floor != source and floor not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line} imports {target} ({source} -> {floor})")
    assert not wrong, "imports that run up a floor:\n" + "\n".join(wrong)


def test_the_check_sees_function_level_and_relative_imports():
    code = ("import os\nfrom pasture import runtime\n\n\ndef f():\n    from ..train import checkpoint\n"
            "    from pasture.tokenizer.tokenizer import Tokenizer\n")
    assert imports_in(code, "pasture.model") == [(2, "pasture.runtime"), (6, "pasture.train.checkpoint"),
                                                 (7, "pasture.tokenizer.tokenizer")]
    assert [floor_of(m) for _, m in imports_in(code, "pasture.model")] == ["ground", "train", "tokenizer"]
    assert not ALLOWED["model"] & {"train", "tokenizer"}
    assert floor_of("pasture.data.cli") == "commands" and floor_of("pasture.speedrun") == "commands"
