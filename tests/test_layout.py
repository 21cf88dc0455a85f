"""The library's layering: the core (script, engine, memory, backbone, sampler, models, project, io,
eval, bench) never imports the synthetic world or the trainer, which are built on it. The CLI, the
top layer, may import anything."""

import ast
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
