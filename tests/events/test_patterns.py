"""The matcher and the pattern index answer exactly what scanning every pattern with
fnmatchcase answers."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcore.events.patterns import MEMO_SIZE, PatternIndex, classify, matches


def scan(entries: list[tuple[str, list[str]]], name: str) -> list[str]:
    """The reference: every value with a pattern that fnmatchcase matches, in order."""
    return [v for v, patterns in entries if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def index_of(entries: list[tuple[str, list[str]]]) -> PatternIndex[str]:
    index: PatternIndex[str] = PatternIndex()
    for value, patterns in entries:
        index.add(patterns, value)
    return index


@pytest.mark.parametrize(
    ("pattern", "kind", "literal"),
    [
        ("order.created", "exact", "order.created"),
        ("order.*", "prefix", "order."),
        ("order.**", "prefix", "order."),
        ("*", "prefix", ""),
        ("**", "prefix", ""),
        ("*.failed", "suffix", ".failed"),
        ("**.failed", "suffix", ".failed"),
        ("order.?", "glob", "order.?"),
        ("order.*.x", "glob", "order.*.x"),
        ("*.x.*", "glob", "*.x.*"),
        ("order.[ab]*", "glob", "order.[ab]*"),
        ("order[", "glob", "order["),  # an unclosed class: fnmatch reads it literally
        ("a]b!c-d", "exact", "a]b!c-d"),  # ] ! - are literal outside a class
    ],
)
def test_patterns_are_classified_by_kind(pattern: str, kind: str, literal: str) -> None:
    assert classify(pattern) == (kind, literal)


ENTRIES: list[tuple[str, list[str]]] = [
    ("all", ["*"]),
    ("orders", ["order.*"]),
    ("created", ["order.created"]),
    ("failures", ["*.failed"]),
    ("single-char", ["order.?"]),
    ("class", ["task.[!a-m]*"]),
    ("middle", ["task.*.done"]),
    ("unclosed", ["order["]),
    ("several", ["agent.*", "order.created", "*.failed"]),
    ("nothing", []),
]


@pytest.mark.parametrize(
    "name",
    [
        "order.created",
        "order.x",
        "order.",
        "order",
        "order[",
        "task.failed",
        "task.zeta",
        "task.alpha",
        "task.step.done",
        "task..done",
        "agent.registered",
        "",
        "ORDER.CREATED",  # case-sensitive, as fnmatchcase
    ],
)
def test_each_pattern_kind_matches_as_the_scan(name: str) -> None:
    assert index_of(ENTRIES).match(name) == scan(ENTRIES, name)


def test_a_value_matching_by_several_patterns_comes_once_in_insertion_order() -> None:
    index: PatternIndex[str] = PatternIndex()
    index.add(["order.*", "*", "order.created", "*.created"], "b")
    index.add(["order.created"], "a")
    assert index.match("order.created") == ["b", "a"]
    assert len(index) == 2


def test_adding_after_a_match_is_seen_by_the_next_match() -> None:
    index: PatternIndex[str] = PatternIndex()
    index.add(["order.*"], "first")
    assert index.match("order.created") == ["first"]
    index.add(["*.created"], "second")
    assert index.match("order.created") == ["first", "second"]


def test_the_memo_is_bounded() -> None:
    index: PatternIndex[str] = PatternIndex()
    index.add(["t*"], "v")
    for i in range(MEMO_SIZE + 10):
        assert index.match(f"t{i}") == ["v"]
    assert len(index._memo) <= MEMO_SIZE


# Alphabets small enough that patterns and names collide often.
_PATTERN = st.text(alphabet="ab.*?[]!-", min_size=0, max_size=7)
_NAME = st.text(alphabet="ab.-[]!", min_size=0, max_size=7)


@settings(max_examples=400, deadline=None)
@given(
    entries=st.lists(st.lists(_PATTERN, max_size=4), max_size=8),
    names=st.lists(_NAME, min_size=1, max_size=10),
)
def test_the_index_equals_the_scan_for_any_patterns(
    entries: list[list[str]], names: list[str]
) -> None:
    values = [(f"v{i}", patterns) for i, patterns in enumerate(entries)]
    index = index_of(values)
    for name in names + names:  # the second time from the memo
        assert index.match(name) == scan(values, name)


@settings(max_examples=400, deadline=None)
@given(patterns=st.lists(_PATTERN, max_size=4), name=_NAME)
def test_the_matcher_equals_the_scan_for_any_patterns(patterns: list[str], name: str) -> None:
    assert matches(name, patterns) == any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert matches(name, tuple(patterns)) == matches(name, patterns)


@pytest.mark.parametrize("name", ["", "order.created", "line\nbreak"])
def test_a_star_matches_every_type_and_no_pattern_none(name: str) -> None:
    assert matches(name, ("*",))
    assert matches(name, ["x", "*"])
    assert not matches(name, ())
