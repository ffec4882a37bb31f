"""The documentation against the code: every configuration field has a row in docs/configuration.md whose default
is the dataclass default, no row names a field that does not exist; the README's two commands, its map of the
modules, links that resolve, shipped names that exist, an index of every measurement file, and short lines."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
from conftest import REPO

from clsd_ds.data.distill import DistillConfig
from clsd_ds.data.seed_import import ImportConfig
from clsd_ds.data.writer import PrepareConfig
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.evaluate import EvalConfig
from clsd_ds.infer.generate import GenerateConfig
from clsd_ds.shadow.primary import PrimaryConfig
from clsd_ds.shadow.sandbox import SandboxConfig
from clsd_ds.shadow.tasks import TasksConfig
from clsd_ds.shipped import PACKAGE
from clsd_ds.train.run import RunConfig

CONFIGURATION = REPO / "docs" / "configuration.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "results" / "README.md"]
TWO_COMMANDS = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt -e . && clsd-ds quickstart",
    ". .venv/bin/activate && python -m pytest -q tests",
]
# (the dataclass, the prefix its fields carry in the docs): each has its own table, under a heading naming the class
TABLES = [(RunConfig, ""), (DecodeConfig, "decode."), (EvalConfig, ""), (GenerateConfig, ""), (PrepareConfig, ""),
          (ImportConfig, ""), (DistillConfig, ""), (PrimaryConfig, ""), (TasksConfig, ""),
          (SandboxConfig, "sandbox.")]


def render(value) -> str:
    """The default column's one rule: ``none``, ``true``/``false``, numbers as YAML reads them (``0.0001``, ``1e-8``,
    ``0``), lists in brackets, strings (and list items that are strings) as code; ``—`` for a required field."""
    if value is dataclasses.MISSING:
        return "—"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].replace("+", "") + m[2], format(value, "g"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    raise TypeError(f"no rendering for a default of type {type(value).__name__}: {value!r}")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section_type(hint) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def leaves(cls: type, prefix: str = "", instance=None) -> dict[str, object]:
    """Every dotted field name of ``cls`` (sections, i.e. dataclass-typed fields, walked recursively) -> its default.
    A section's fields take their values from the section's own default, so a parent that builds it with other
    values is documented with those."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name) if instance is not None else _default(f)
        section = _section_type(hints[f.name])
        if section is not None:
            out.update(leaves(section, f"{prefix}{f.name}.", None if value is dataclasses.MISSING else value))
        else:
            out[prefix + f.name] = value
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables() -> dict[str, dict[str, tuple[str, str]]]:
    """docs/configuration.md's tables, by the class each heading names: field -> (default, meaning)."""
    found, current, rows = {}, None, None
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("#"):
            names = [cls.__name__ for cls, _ in TABLES if f"`{cls.__name__}`" in line]
            assert len(names) <= 1, f"one class per heading: {line!r}"
            current = names[0] if names else None
            rows = None
            continue
        if current is None or not line.startswith("|"):
            if rows is not None and current is not None:
                current = None  # one table per heading: a second table under it is not read
            continue
        cells = _cells(line)
        if rows is None:
            assert cells[:3] == ["field", "default", "meaning"], f"{current}: header {cells}"
            assert current not in found, f"two tables for {current}"
            rows = found[current] = {}
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == 3, f"{current}: a row of {len(cells)} cells: {line!r}"
        m = re.fullmatch(r"`([A-Za-z0-9_.*]+)`", cells[0])
        assert m, f"{current}: the field cell must be one `dotted.name`: {line!r}"
        assert m[1] not in rows, f"{current}: two rows for {m[1]}"
        rows[m[1]] = (cells[1], cells[2])
    return found


@pytest.mark.parametrize("cls,prefix", TABLES, ids=[c.__name__ for c, _ in TABLES])
def test_configuration_table_matches_the_dataclass(cls, prefix):
    all_tables = tables()
    assert cls.__name__ in all_tables, f"docs/configuration.md has no table under a heading naming `{cls.__name__}`"
    rows = all_tables[cls.__name__]
    fields = leaves(cls, prefix)
    problems = []
    used_refs = set()
    for name, default in fields.items():
        parts = name.split(".")
        refs = [".".join(parts[:i]) + ".*" for i in range(1, len(parts))]
        ref = next((r for r in refs if r in rows), None)
        if name in rows:
            if rows[name][0] != render(default):
                problems.append(f"{name}: the docs say {rows[name][0]}, the code {render(default)}")
        elif ref is not None:
            # `section.*`: the section is documented in full in the one other table that lists its fields
            used_refs.add(ref)
            expanded = [(c, r[name]) for c, r in all_tables.items() if c != cls.__name__ and name in r]
            if len(expanded) != 1:
                problems.append(f"{name}: `{ref}` refers to {len(expanded)} tables listing {name}, not one")
            elif expanded[0][1][0] != render(default):
                problems.append(f"{name} (via `{ref}`, documented under {expanded[0][0]}): the docs say "
                                f"{expanded[0][1][0]}, the code {render(default)}")
        else:
            problems.append(f"{name}: undocumented (code default {render(default)})")
    for name in rows:
        if name not in fields and name not in used_refs:
            problems.append(f"{name}: a row for a field {cls.__name__} does not have")
    assert not problems, f"docs/configuration.md vs {cls.__name__}:\n  " + "\n  ".join(problems)


def test_render_rule():
    assert [render(v) for v in (None, True, 0, 50000, 1e-4, 1e-8, 0.0, 1.0, [0.9, 0.999], "zero", "", [])] == [
        "none", "true", "0", "50000", "0.0001", "1e-8", "0", "1", "[0.9, 0.999]", "`zero`", '`""`', "[]"]


def test_readme_two_commands():
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    assert [b.splitlines() for b in blocks if TWO_COMMANDS[0] in b] == [TWO_COMMANDS]


def test_readme_maps_every_module():
    readme = (REPO / "README.md").read_text()
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "clsd_ds").rglob("*.py")
                     if p.name != "__init__.py")
    missing = [m for m in modules if f"`{m}`" not in readme]
    assert not missing, f"README.md's map of the modules lacks {missing}"


def _anchors(page) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped (letters, digits, ``-``, ``_`` kept), spaces to ``-``."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path) if path else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_shipped_names_exist():
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"\b((?:ds_configs/[a-z0-9_]+\.json)|(?:configs/[a-z0-9_]+\.yaml))", page.read_text()))
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert named and not missing, f"shipped files named in the docs that do not ship: {missing}"


def test_every_measurement_file_is_indexed():
    index = (REPO / "bench" / "results" / "README.md").read_text()
    files = sorted(p.name for p in (REPO / "bench" / "results").iterdir() if p.name != "README.md")
    missing = [f for f in files if f"`{f}`" not in index]
    assert not missing, f"bench/results/README.md does not describe {missing}"


def test_lines_are_short():
    long = [f"{p.relative_to(REPO)}:{i}" for p in PAGES for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert not long, long
