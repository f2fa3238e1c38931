"""Kubernetes label-selector semantics and validation."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.errors import InputError
from egressgw.policy.labels import (
    LabelSelector,
    Operator,
    Requirement,
    label_key_problem,
    label_value_problem,
    parse_label_selector,
)
from egressgw.policy.yamlfiles import Where

KEYS = st.sampled_from(["app", "tier", "zone", "example.com/team", "k"])
VALUES = st.sampled_from(["a", "b", "web", "db", "x-1"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=5)
VALUE_SETS = st.frozensets(VALUES, min_size=1, max_size=3)


def parse(body):
    return parse_label_selector(body, Where("s.yaml", 1, "sel"))


@settings(max_examples=150)
@given(labels=LABELS, key=KEYS, values=VALUE_SETS)
def test_not_in_is_the_complement_of_in(labels, key, values):
    inside = Requirement(key, Operator.IN, values).matches(labels)
    outside = Requirement(key, Operator.NOT_IN, values).matches(labels)
    assert inside != outside


@settings(max_examples=150)
@given(labels=LABELS, key=KEYS)
def test_does_not_exist_is_the_complement_of_exists(labels, key):
    assert Requirement(key, Operator.EXISTS).matches(labels) == (key in labels)
    assert Requirement(key, Operator.DOES_NOT_EXIST).matches(labels) == (key not in labels)


@settings(max_examples=150)
@given(labels=LABELS, data=st.data())
def test_a_selector_of_a_subset_of_the_labels_matches_them(labels, data):
    subset = data.draw(st.sets(st.sampled_from(sorted(labels)) if labels else st.nothing()))
    selector = parse({"matchLabels": {k: labels[k] for k in subset}})
    assert selector.matches(labels)


@settings(max_examples=150)
@given(labels=LABELS, wanted=LABELS)
def test_match_labels_equals_its_in_requirements(labels, wanted):
    as_labels = LabelSelector(wanted)
    as_expressions = LabelSelector({}, as_labels.requirements())
    assert as_labels.matches(labels) == as_expressions.matches(labels)
    assert as_labels.matches(labels) == all(labels.get(k) == v for k, v in wanted.items())


@settings(max_examples=100)
@given(labels=LABELS)
def test_empty_selector_matches_everything(labels):
    assert parse({}).matches(labels)


def test_all_conditions_must_hold():
    selector = parse({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    })
    assert selector.matches({"app": "web", "tier": "edge"})
    assert not selector.matches({"app": "web", "tier": "back"})
    assert not selector.matches({"app": "web", "tier": "edge", "canary": ""})
    assert not selector.matches({"app": "db", "tier": "edge"})


@pytest.mark.parametrize("key", ["app", "a", "example.com/app", "a.b-c_d", "x" * 63,
                                 "kubernetes.io/metadata.name"])
def test_valid_keys(key):
    assert label_key_problem(key) is None


@pytest.mark.parametrize("key", ["", "-app", "app-", "a b", "x" * 64, "/app", "Example.com/app",
                                 "example.com/", "a/b/c"])
def test_invalid_keys(key):
    assert label_key_problem(key) is not None


@pytest.mark.parametrize("value", ["", "web", "v1.2", "A_b-c"])
def test_valid_values(value):
    assert label_value_problem(value) is None


@pytest.mark.parametrize("value", ["-web", "web-", "a b", "x" * 64, "a/b"])
def test_invalid_values(value):
    assert label_value_problem(value) is not None


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"matchExpressions": [{"operator": "Exists"}]},
     "sel.matchExpressions[0].key", "required"),
    ({"matchExpressions": [{"key": "a"}]}, "sel.matchExpressions[0].operator", "required"),
    ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]},
     "sel.matchExpressions[0].operator", "unsupported operator 'Equals'"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
     "sel.matchExpressions[0].values", "must be non-empty for operator In"),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["b"]}]},
     "sel.matchExpressions[0].values", "must be empty for operator DoesNotExist"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "no way"]}]},
     "sel.matchExpressions[0].values[1]", "invalid label value 'no way'"),
    ({"matchLabels": {"app": 5}}, "sel.matchLabels.app", "must be a string, not a number (5)"),
    ({"matchLabels": ["app"]}, "sel.matchLabels", "must be a mapping, not a list"),
    ({"matchLabel": {"app": "web"}}, "sel.matchLabel", "unknown field"),
])
def test_invalid_selectors_name_the_field(body, field, message):
    with pytest.raises(InputError) as caught:
        parse(body)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"s.yaml: document 1: {field}: {message}")
