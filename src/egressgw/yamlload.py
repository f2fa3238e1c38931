"""Strict YAML loading for every YAML reader: bounded in size and depth, no aliases.

Policies, inventories and workloads are small hand-written or kubectl-written objects;
none of them needs YAML's anchors and aliases, and aliases are what make a 1 KB file
expand into gigabytes (the "billion laughs") or into a list that contains itself. So:

- an alias (``*name``) is an error naming its line: Kubernetes objects never carry
  them (the API server stores JSON, which has none);
- a duplicate key in a mapping is an error, as kubectl's strict field validation
  (``--validate=strict``, kubectl's default; KEP-2885) makes it, instead of YAML's "the
  last one wins";
- a file larger than :data:`MAX_YAML_BYTES`, nesting deeper than :data:`MAX_DEPTH`, an
  integer longer than :data:`MAX_NUMBER_CHARS` and a date that does not exist are
  errors with a line, never a traceback;
- invalid UTF-8 is an error naming the line and byte offset (``inputfiles``).

Every error is an :class:`InputError` naming the file (and the line when known).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from egressgw.errors import InputError, excerpt
from egressgw.inputfiles import MAX_YAML_BYTES, read_text

# Deepest nesting of mappings and lists. A CiliumEgressGatewayPolicy is 7 levels deep,
# kubectl's managedFields about 12; libyaml itself stops at 1000.
MAX_DEPTH = 64
# Longest integer scalar: a port or a count has at most a few digits; Python refuses to
# convert more than 4300 digits, with a ValueError a reader would not expect.
MAX_NUMBER_CHARS = 32

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# The libyaml parser is several times faster on large policy sets and has its own nesting
# limit; the pure-Python one is the fallback when PyYAML was built without it.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    """SafeLoader whose number and date constructors fail with a line, not a ValueError."""

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return int(SafeConstructor.construct_yaml_int(self, node))
        except ValueError as exc:
            raise ConstructorError(None, None, f"invalid integer: {exc}", node.start_mark) from None

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:
        try:
            return SafeConstructor.construct_yaml_timestamp(self, node)
        except (ValueError, OverflowError) as exc:
            raise ConstructorError(
                None, None, f"invalid date {excerpt(node.value)}: {exc}", node.start_mark
            ) from None


_Loader.add_constructor(_INT_TAG, _Loader.construct_yaml_int)
_Loader.add_constructor(_TIMESTAMP_TAG, _Loader.construct_yaml_timestamp)


def load_yaml_documents(text: str, source: str) -> list[Any]:
    """Every document of ``text`` (None for an empty one), strictly checked (see above)."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB", source=source)
    loader = _Loader(text)
    documents: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            _check_tree(node, source)
            documents.append(loader.construct_document(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(
            f"invalid YAML: {problem}", source=source, line=None if mark is None else mark.line + 1
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {excerpt(str(exc), 80)}", source=source) from None
    except RecursionError:
        # Only the pure-Python parser recurses per level; libyaml stops at 1000 itself.
        raise InputError(f"nested deeper than {MAX_DEPTH} levels", source=source) from None
    finally:
        loader.dispose()
    return documents


def _check_tree(root: Node, source: str) -> None:
    """Refuse aliases, duplicate keys, deep nesting and long integers, iteratively.

    libyaml's composer returns the anchored node object itself for an alias, so an alias
    is a node reached twice; a walk that remembers the nodes it saw finds every one,
    including an alias inside its own anchor, without ever expanding anything.
    """
    seen: set[int] = set()
    # (node, depth, the line it is used at: its key's line for a mapping value)
    stack: list[tuple[Node, int, int]] = [(root, 1, root.start_mark.line + 1)]
    while stack:
        node, depth, used_at = stack.pop()
        line = node.start_mark.line + 1
        if id(node) in seen:
            raise InputError(
                f"YAML aliases (*name) are not accepted: write out the value anchored at "
                f"line {line}",
                source=source,
                line=used_at,
            )
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise InputError(f"nested deeper than {MAX_DEPTH} levels", source=source, line=line)
        if isinstance(node, ScalarNode):
            if node.tag in (_INT_TAG, _FLOAT_TAG) and len(node.value) > MAX_NUMBER_CHARS:
                raise InputError(
                    f"a number of {len(node.value)} characters (at most {MAX_NUMBER_CHARS})",
                    source=source,
                    line=line,
                )
        elif isinstance(node, SequenceNode):
            stack.extend(
                (child, depth + 1, max(line, child.start_mark.line + 1))
                for child in reversed(node.value)
            )
        elif isinstance(node, MappingNode):
            keys: set[tuple[str, str]] = set()
            children: list[tuple[Node, int, int]] = []
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                    identity = (key.tag, key.value)
                    if identity in keys:
                        raise InputError(
                            f"duplicate key {excerpt(key.value)} (kubectl's strict validation "
                            "refuses it too)",
                            source=source,
                            line=key.start_mark.line + 1,
                        )
                    keys.add(identity)
                key_line = key.start_mark.line + 1
                children += [(key, depth + 1, key_line), (value, depth + 1, key_line)]
            # Visited in document order, so the second use of a node is the alias.
            stack.extend(reversed(children))


__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "MAX_YAML_BYTES", "load_yaml_documents", "read_text"]
