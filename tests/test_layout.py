"""The library's layering: the core (script, engine, memory, backbone, sampler, models, project, io,
eval, bench) never imports the synthetic world or the trainer, which are built on it. The CLI, the
top layer, may import anything."""

import ast
import re
from pathlib import Path

import filmweaver

PACKAGE = Path(filmweaver.__file__).parent
LAB = ("filmweaver.synth", "filmweaver.train")
CLIENTS = {"synth", "train", "cli.py"}  # built on the core: they may import it and each other


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_the_core_never_imports_the_synthetic_world_or_the_trainer():
    core = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in CLIENTS]
    assert len(core) > 20  # the scan sees the package
    upward = [f"{p.relative_to(PACKAGE)}:{line} imports {name}" for p in core for line, name in _imports(p)
              if name.startswith(LAB)]
    assert not upward, "\n".join(upward)


def test_the_scan_finds_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from filmweaver.synth.stories import make_story\n    import filmweaver.train.run\n")
    assert [name for _, name in _imports(bad) if name.startswith(LAB)] == [
        "filmweaver.synth.stories", "filmweaver.synth.stories.make_story", "filmweaver.train.run"]


def _readme_map() -> list[str]:
    """The paths the README's "How it works" map names (``folder/`` lines head the indented ones)."""
    text = (PACKAGE.parents[1] / "README.md").read_text()
    block = text.split("## How it works", 1)[1].split("```", 2)[1]
    paths, folder = [], ""
    for line in block.splitlines():
        first_column = re.split(r"\s{2,}", line.strip())[0]
        names = [n.strip() for n in first_column.split(",") if re.fullmatch(r"[\w/]+(\.py|/)", n.strip())]
        if line.startswith(" "):
            paths += [folder + n for n in names]
        elif names:
            folder = names[0] if names[0].endswith("/") else ""
            paths += names
    return paths


def test_the_readme_map_names_what_exists():
    """The map a newcomer reads is kept true: every module it names exists, and every core module
    and folder is on it."""
    named = _readme_map()
    assert len(named) > 30
    missing = [n for n in named if not (PACKAGE / n).exists()]
    assert not missing, f"README names modules that do not exist: {missing}"
    core = {str(p.relative_to(PACKAGE)) for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    core |= {str(p.relative_to(PACKAGE)) for p in PACKAGE.glob("engine/*.py") if p.name != "__init__.py"}
    core |= {str(p.relative_to(PACKAGE)) for p in PACKAGE.glob("backbone/*.py") if p.name != "__init__.py"}
    unmapped = sorted(core - set(named))
    assert not unmapped, f"modules missing from the README's map: {unmapped}"
