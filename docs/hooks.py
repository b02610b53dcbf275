"""MkDocs hook: the config reference, generated from conf/ at every build so it cannot drift.

`docs/reference/configs.md` holds the marker `<!-- conf-reference -->`; this hook replaces it
with, for each command's primary config (train.yaml, sample.yaml, ...), its options and their
comments, and for each config group (conf/<group>/), its options and the one or two lines that
head each file."""

from __future__ import annotations

import re
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
MARKER = "<!-- conf-reference -->"
KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*(?:#\s*(.*))?$")


def header(path: Path) -> str:
    """The comment lines a config file starts with (after `# @package`), as one line."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def top_level_options(path: Path) -> list[tuple[str, str, str]]:
    """(key, value, comment) of a config's top-level keys (a comment block right above a key
    counts as its comment)."""
    out, above = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if m and m.group(1) not in ("defaults", "hydra"):
            comment = m.group(3) or " ".join(above)
            out.append((m.group(1), m.group(2), comment))
        if not line.startswith((" ", "-")):
            above = []
    return out


def reference() -> str:
    md = ["## Commands", ""]
    for path in sorted(CONF.glob("*.yaml")):
        md += [f"### `{path.name}`", "", header(path), ""]
        options = top_level_options(path)
        if options:
            md += ["| option | default | what it does |", "|---|---|---|"]
            md += [f"| `{k}` | `{cell(v) or '-'}` | {cell(c)} |" for k, v, c in options]
            md.append("")
    md += ["## Config groups", ""]
    for group in sorted(p for p in CONF.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        name = group.relative_to(CONF).as_posix()
        md += [f"### `{name}`", "", "| option | what it does |", "|---|---|"]
        for path in sorted(group.glob("*.yaml")):
            md.append(f"| `{name}={path.stem}` | {cell(header(path)) or '-'} |")
        md.append("")
        for path in sorted(group.glob("*.yaml")):
            options = top_level_options(path)
            if not options:
                continue
            md += [f"`{name}={path.stem}` sets:", "", "| option | value | what it does |"]
            md += ["|---|---|---|"]
            package = path.read_text().split("\n", 1)[0]
            is_global = package.startswith("# @package") and "_global_" in package
            prefix = "" if is_global else name.replace("/", ".") + "."
            md += [
                f"| `{prefix}{k}` | `{cell(v) or '(a mapping)'}` | {cell(c)} |"
                for k, v, c in options
            ]
            md.append("")
    return "\n".join(md)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs API
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
