"""JSON and YAML documents for ``-o json`` / ``-o yaml``.

PyYAML is imported only when YAML is asked for, so JSON and table output stay quick to
start.
"""

from __future__ import annotations

import json
from typing import Any

from egressgw.errors import ConfigError

DOCUMENT_FORMATS = ("json", "yaml")


def dump_document(doc: Any, fmt: str) -> str:
    """Serialize a document of plain values (dict, list, str, int, float, bool, None).

    JSON is indented by 2 and ends with a newline; YAML keeps the key order of the document.
    """
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        import yaml  # noqa: PLC0415 -- only YAML output pays for loading PyYAML

        text: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        return text
    raise ConfigError(f"{fmt!r}: expected one of {', '.join(DOCUMENT_FORMATS)}", field="output")
