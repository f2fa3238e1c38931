"""Reading YAML input files: documents, their place in the file, and located errors.

Every value handed to a parser travels with a :class:`Where` (file, 1-based document
index, field path), so any error can say exactly which field of which document is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egressgw.errors import InputError, excerpt
from egressgw.yamlload import load_yaml_documents, read_text

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Where:
    """A place in the input: file, document (1-based, None for single-document input), field."""

    source: str
    document: int | None = None
    field: str = ""

    def key(self, name: str) -> Where:
        return Where(self.source, self.document, f"{self.field}.{name}" if self.field else name)

    def item(self, index: int) -> Where:
        return Where(self.source, self.document, f"{self.field}[{index}]")

    def error(self, message: str) -> InputError:
        return InputError(
            message, source=self.source, document=self.document, field=self.field or None
        )


def yaml_files(path: Path) -> list[Path]:
    """``path`` itself, or the *.yaml/*.yml files directly in directory ``path``, sorted."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
    if not path.exists():
        raise InputError("no such file or directory", source=str(path))
    return [path]


def load_documents(path: Path) -> Iterator[tuple[Where, Any]]:
    """Each non-empty YAML document of ``path`` with its place (document index 1-based)."""
    source = str(path)
    documents = load_yaml_documents(read_text(path), source)
    for index, body in enumerate(documents, start=1):
        if body is not None:
            yield Where(source, index), body


def load_single_document(path: Path) -> tuple[Where, Any]:
    """The one document of ``path`` (errors then name no document index)."""
    documents = list(load_documents(path))
    if not documents:
        raise InputError("the file is empty", source=str(path))
    if len(documents) > 1:
        raise InputError("expected one YAML document, found several", source=str(path))
    return Where(str(path)), documents[0][1]


# Small typed accessors shared by the policy and inventory parsers.


def as_mapping(value: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise where.error(f"must be a mapping, not {_kind(value)}")
    return value


def as_list(value: Any, where: Where) -> list[Any]:
    if not isinstance(value, list):
        raise where.error(f"must be a list, not {_kind(value)}")
    return value


def as_string(value: Any, where: Where) -> str:
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
        raise where.error(f"must be a string, not {_kind(value)}{hint}")
    return value


def check_keys(body: Mapping[str, Any], allowed: tuple[str, ...], where: Where) -> None:
    """Reject unknown fields, as kubectl's strict field validation does: typos get caught."""
    for key in body:
        if key not in allowed:
            raise where.key(key_text(key)).error(
                f"unknown field (expected one of: {', '.join(allowed)})"
            )


def key_text(key: Any) -> str:
    """A mapping key as a field name in an error: short and escaped (see ``excerpt``)."""
    if isinstance(key, str) and len(key) <= 63 and key.isprintable():
        return key
    return excerpt(key)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({excerpt(value)})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
