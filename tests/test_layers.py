"""Imports run one way: cli -> api -> evaluation -> lit -> diffusion -> models -> data, with
the small utilities (config, checkpoint, precision, visualize, provenance) importable from anywhere above
data. Lazy imports inside functions count too: a cycle hidden in a function is still a cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "facediff"
LAYERS = {  # lower imports nothing higher
    "data": 0,
    "config": 1,
    "checkpoint": 1,
    "precision": 1,
    "visualize": 1,
    "conditions": 1,
    "provenance": 1,
    "models": 2,
    "diffusion": 3,
    "lit": 4,
    "pipeline": 4,
    "evaluation": 5,
    "api": 6,
    "editing": 6,
    "export": 6,
    "app": 6,
    "__init__": 6,
    "cli": 7,
}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[part.removesuffix(".py")]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facediff"):
            found.add(node.module)
            if node.module == "facediff":
                found.update(f"facediff.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("facediff"))
    return found


def test_imports_only_go_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        me = ".".join(rel.parts)
        mine = layer(me if me != "facediff.__init__" else "facediff")
        for other in imports(path):
            if other == "facediff":
                continue
            if layer(other) > mine:
                wrong.append(f"{me} imports {other}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
