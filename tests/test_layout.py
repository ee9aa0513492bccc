"""The package's shape: stages import only earlier stages, and no module or function outgrows a reader.

The stages, in the order of the workflow's data flow, are the subpackages of
jibjib (docs/development.md). A stage may import `core` and the stages
before it, never a later one, and never a private (`_name`) of another stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# The data flow: a stage may import the stages before it. `models` precedes `embeddings`:
# the embedding cache runs the VGGish trunk that models builds.
STAGES = ("core", "features", "labels", "packing", "models", "embeddings", "training", "evaluation", "selftraining",
          "serving", "analysis", "demo", "cli")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 90
PACKAGE = REPO / "jibjib"


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def stage_of(module: str) -> str | None:
    """The stage of a dotted jibjib module name (None for jibjib itself and jibjib.__main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import of jibjib in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.startswith("jibjib")]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import (jibjib imports absolutely)"
            if node.module and node.module.startswith("jibjib"):
                found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def test_every_module_belongs_to_a_stage() -> None:
    loose = [path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the stage subpackages: {loose}"
    unknown = sorted({p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} - set(STAGES))
    assert not unknown, f"subpackages that are not a stage of STAGES: {unknown}"


def private_attributes(path: Path, modules: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `module._name` in a file, for the imported modules (alias -> module)."""
    return [(node.lineno, modules[node.value.id], node.attr) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
            and node.attr.startswith("_") and not node.attr.startswith("__")]


def imported_modules(path: Path) -> dict[str, str]:
    """Local name -> dotted jibjib module, for each module a file imports by name (`from jibjib.x import y`)."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jibjib"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if (REPO / Path(*dotted.split("."))).with_suffix(".py").exists() or (REPO / Path(*dotted.split("."))).is_dir():
                    found[alias.asname or alias.name] = dotted
    return found


def test_stages_import_only_earlier_stages_and_no_private_names() -> None:
    problems = []
    for path in sources("jibjib"):
        importer = stage_of(module_name(path))
        if importer is None:
            continue
        for line, module, name in private_attributes(path, imported_modules(path)):
            if stage_of(module) != importer:
                problems.append(f"{path.relative_to(REPO)}:{line}: {importer} uses private {module}.{name}")
        for line, module, names in imports(path):
            target = stage_of(module)
            if target is None:
                # `from jibjib import __version__` is the only name of the package itself.
                if set(names) - {"__version__"}:
                    problems.append(f"{path.relative_to(REPO)}:{line}: imports {names} from {module}")
                continue
            # `from jibjib.stage import module` names a module, whose stage is the one that counts.
            if STAGES.index(target) > STAGES.index(importer):
                problems.append(f"{path.relative_to(REPO)}:{line}: {importer} imports the later stage {module}")
            private = [name for name in names if name.startswith("_")]
            if target != importer and private:
                problems.append(f"{path.relative_to(REPO)}:{line}: {importer} imports private {private} of {module}")
    assert not problems, "\n".join(problems)


def test_the_import_check_sees_a_violation(tmp_path: Path) -> None:
    """The walk above finds imports inside functions too: a lazy import is still a dependency."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jibjib.analysis.tables import _private\n")
    assert imports(module) == [(2, "jibjib.analysis.tables", ["_private"])]
    module.write_text("from jibjib.evaluation import metrics\nmetrics._hidden(1)\n")
    assert private_attributes(module, imported_modules(module)) == [(2, "jibjib.evaluation.metrics", "_hidden")]


@pytest.mark.parametrize("folder", ["jibjib", "benchmarks"])
def test_no_module_or_function_too_long(folder: str) -> None:
    too_long = []
    for path in sources(folder):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} has {length} lines "
                                    f"(at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_test_files_have_names_of_their_own() -> None:
    # Every test folder is on sys.path (conftest.py), so two test files of one name in two folders collide:
    # pytest stops collecting the whole suite.
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{path.relative_to(REPO)} and {seen[path.name].relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, "\n".join(clashes)
