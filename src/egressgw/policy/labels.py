"""Kubernetes label selectors: matchLabels and matchExpressions, validated like the API server.

Semantics (k8s.io/apimachinery labels): every matchLabels pair and every requirement must
hold; ``In`` needs the key present with one of the values, ``NotIn`` holds when the key is
absent or its value is not listed, ``Exists``/``DoesNotExist`` test the key only. An empty
selector matches everything.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egressgw.errors import excerpt
from egressgw.policy.yamlfiles import Where, as_list, as_mapping, as_string, check_keys, key_text

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Cilium accepts label keys with a source prefix ("k8s:app", "any:app"); the source
# carries no meaning for Kubernetes labels, so it is dropped.
_CILIUM_SOURCES = ("k8s:", "any:")


def is_dns_subdomain(text: str) -> bool:
    """Whether ``text`` is a DNS subdomain (RFC 1123), as Kubernetes object names must be."""
    return len(text) <= 253 and bool(_DNS_SUBDOMAIN.match(text))


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"invalid label key {excerpt(key)}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return (
            f"invalid label key {excerpt(key)}: the name must be 1-63 characters, alphanumeric, "
            "'-', '_' or '.', starting and ending alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None (the empty value is valid)."""
    if value and (len(value) > 63 or not _NAME.match(value)):
        return (
            f"invalid label value {excerpt(value)}: at most 63 characters, alphanumeric, "
            "'-', '_' or '.', starting and ending alphanumeric"
        )
    return None


def parse_labels(value: Any, where: Where) -> dict[str, str]:
    """A {key: value} label map, validated."""
    labels: dict[str, str] = {}
    for key, item in as_mapping(value, where).items():
        at = where.key(key_text(key))
        text = as_string(item, at)
        problem = label_key_problem(str(key)) or label_value_problem(text)
        if problem:
            raise at.error(problem)
        labels[str(key)] = text
    return labels


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator is Operator.IN:
            return present and labels[self.key] in self.values
        if self.operator is Operator.NOT_IN:
            return not present or labels[self.key] not in self.values
        if self.operator is Operator.EXISTS:
            return present
        return not present

    def with_key_prefix(self, prefix: str) -> Requirement:
        return Requirement(prefix + self.key, self.operator, self.values)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """matchLabels and matchExpressions; all of them must hold."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(requirement.matches(labels) for requirement in self.match_expressions)

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def with_key_prefix(self, prefix: str) -> LabelSelector:
        """The same selector over keys ``prefix + key`` (how Cilium scopes namespace labels)."""
        return LabelSelector(
            {prefix + key: value for key, value in self.match_labels.items()},
            tuple(r.with_key_prefix(prefix) for r in self.match_expressions),
        )

    def requirements(self) -> tuple[Requirement, ...]:
        """Every condition as a requirement (matchLabels become ``In`` with one value)."""
        return tuple(
            Requirement(key, Operator.IN, frozenset([value]))
            for key, value in self.match_labels.items()
        ) + self.match_expressions


def _strip_source(key: str) -> str:
    for source in _CILIUM_SOURCES:
        if key.startswith(source):
            return key[len(source) :]
    return key


def parse_label_selector(value: Any, where: Where) -> LabelSelector:
    """Parse a Kubernetes LabelSelector mapping, rejecting what the API server rejects."""
    body = as_mapping(value, where)
    check_keys(body, ("matchLabels", "matchExpressions"), where)
    match_labels: dict[str, str] = {}
    if body.get("matchLabels") is not None:
        at = where.key("matchLabels")
        for key, item in as_mapping(body["matchLabels"], at).items():
            key_at = at.key(key_text(key))
            text = as_string(item, key_at)
            name = _strip_source(str(key))
            problem = label_key_problem(name) or label_value_problem(text)
            if problem:
                raise key_at.error(problem)
            match_labels[name] = text
    expressions: list[Requirement] = []
    if body.get("matchExpressions") is not None:
        at = where.key("matchExpressions")
        for index, item in enumerate(as_list(body["matchExpressions"], at)):
            expressions.append(_parse_requirement(item, at.item(index)))
    return LabelSelector(match_labels, tuple(expressions))


def _parse_requirement(value: Any, where: Where) -> Requirement:
    body = as_mapping(value, where)
    check_keys(body, ("key", "operator", "values"), where)
    if "key" not in body:
        raise where.key("key").error("required")
    key = _strip_source(as_string(body["key"], where.key("key")))
    problem = label_key_problem(key)
    if problem:
        raise where.key("key").error(problem)
    if "operator" not in body:
        raise where.key("operator").error("required")
    text = as_string(body["operator"], where.key("operator"))
    try:
        operator = Operator(text)
    except ValueError:
        expected = ", ".join(op.value for op in Operator)
        raise where.key("operator").error(
            f"unsupported operator {excerpt(text)} (expected one of: {expected})"
        ) from None
    raw_values = body.get("values")
    values_at = where.key("values")
    values = [] if raw_values is None else as_list(raw_values, values_at)
    texts = [as_string(v, values_at.item(i)) for i, v in enumerate(values)]
    for i, text_value in enumerate(texts):
        problem = label_value_problem(text_value)
        if problem:
            raise values_at.item(i).error(problem)
    if operator in (Operator.IN, Operator.NOT_IN) and not texts:
        raise values_at.error(f"must be non-empty for operator {operator.value}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and texts:
        raise values_at.error(f"must be empty for operator {operator.value}")
    return Requirement(key, operator, frozenset(texts))
