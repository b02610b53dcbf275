"""What docs/architecture.md states about the house, checked: the layers (read from the page),
imports only down them, no import cycle anywhere (inside a layer too; lazy imports in functions
count: a cycle hidden in a function is still a cycle), no file over 450 lines, and the training
step two hops from the facediff-train console script."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "facediff"
MAX_LINES = 450


def stated_layers() -> dict[str, int]:
    """{top-level part: layer} from the ```layers block of docs/architecture.md."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", page, re.S)
    assert block, "docs/architecture.md: no ```layers block"
    layers = {}
    for line in block.group(1).splitlines():
        level, *parts = line.split()
        layers |= {p: int(level) for p in parts}
    return layers


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


def imports(path: Path, known) -> set[str]:
    """The facediff modules a file imports: `from a.b import c` counts as a.b.c where that is a
    module (importing a submodule through its package), else as a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facediff"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("facediff"))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {o for o in imports(p, mods) if o in mods} - {m} for m, p in mods.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_part_of_the_package_has_a_stated_layer():
    layers = stated_layers()
    missing = sorted({part(m) for m in modules()} - set(layers) - {"conf"})
    assert not missing, f"docs/architecture.md states no layer for {missing}"


def test_imports_only_go_down_the_layers():
    layers = stated_layers()
    wrong = [
        f"{me} imports {other}"
        for me, others in graph().items()
        for other in sorted(others)
        if layers[part(other)] > layers[part(me)]
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle_anywhere():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle_inside_a_layer():
    g = {"facediff.data.a": {"facediff.data.b"}, "facediff.data.b": {"facediff.data.a"}}
    g["facediff.data.c"] = {"facediff.data.a"}
    assert cycles(g) == [["facediff.data.a", "facediff.data.b"]]


def test_no_file_is_over_the_line_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_training_step_is_two_hops_from_the_console_script():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'facediff-train = "facediff.cli.train:main"' in pyproject
    train = ast.parse((PACKAGE / "cli" / "train.py").read_text())
    fit_from = {
        n.module
        for n in ast.walk(train)
        if isinstance(n, ast.ImportFrom) and "fit" in {a.name for a in n.names}
    }
    assert fit_from == {"facediff.lit.training"}  # hop 1: cli/train.py -> fit
    training = (PACKAGE / "lit" / "training.py").read_text()
    assert "trainer.fit(model" in training  # hop 2: fit -> Lightning -> training_step
    target = (ROOT / "conf" / "model" / "diffusion.yaml").read_text()
    assert "_target_: facediff.lit.diffusion.LatentDiffusion" in target
