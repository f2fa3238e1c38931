"""Output paths checked before a long run: a bad one fails at once, in one line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from egressgw.errors import ConfigError


def check_output_path(path: Path, suffixes: Sequence[str], *, field: str) -> None:
    """The file can be written: a known extension, an existing writable directory."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: expected a {' or '.join(suffixes)} file", field=field)
    _check_directory(path.parent if str(path.parent) else Path("."), field=field, what=path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory", field=field)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path}: not writable", field=field)


def check_output_dir(path: Path, *, field: str) -> None:
    """The directory exists and is writable, or can be created under one that is."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: not a directory", field=field)
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: not writable", field=field)
        return
    parent = path.parent if str(path.parent) else Path(".")
    _check_directory(parent, field=field, what=path)


def _check_directory(directory: Path, *, field: str, what: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(f"{what}: directory {directory} does not exist", field=field)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: directory {directory} is not writable", field=field)


def notice_model_compile() -> None:
    """Say on stderr that the first run compiles the model (so a pause is expected)."""
    import click  # noqa: PLC0415

    from egressgw.datapath.model.warmup import (  # noqa: PLC0415
        COMPILE_NOTICE,
        model_needs_compiling,
    )

    if model_needs_compiling():
        click.echo(COMPILE_NOTICE, err=True)
