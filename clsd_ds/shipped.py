"""Files that ship inside the package (DeepSpeed JSONs, example configs), found by the names the docs give them.

A path is looked up as given (absolute, or relative to the working directory) first; if nothing is there and it
names a shipped file — ``ds_configs/zero3_bf16.json``, ``configs/stage_a_9b.yaml`` — the copy installed with the
package is used, so the same name works from any directory, with an editable or a plain install. A path that names
nothing is an error that says where it was looked for.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError

PACKAGE = Path(__file__).resolve().parent
SHIPPED_DIRS = ("ds_configs", "configs")


def shipped(name: str) -> Path:
    """The installed copy of a shipped file, e.g. ``shipped("ds_configs/cpu_zero3.json")`` (it need not exist)."""
    return PACKAGE / name


def resolve(path: str | Path, what: str) -> Path:
    """``path`` as given if it exists, else the shipped file of that name; ``what`` names the field in errors."""
    given = Path(path)
    if given.is_file():
        return given
    tried = [given.resolve()]
    parts = given.parts
    if not given.is_absolute() and parts and parts[0] in SHIPPED_DIRS:
        candidate = PACKAGE.joinpath(*parts)
        if candidate.is_file():
            return candidate
        tried.append(candidate)
        listing = sorted(p.name for p in (PACKAGE / parts[0]).iterdir() if p.is_file())
        hint = f"; shipped {parts[0]}: {', '.join(listing)}"
    else:
        hint = f" (shipped files are named {' or '.join(d + '/NAME' for d in SHIPPED_DIRS)})"
    raise ConfigError(f"{what} '{path}' names no file; looked for {' and '.join(map(str, tried))}{hint}")
