"""Event-type glob patterns: the one matcher, and an index of many subscriptions.

A subscription (a stream's filter, a webhook) names glob patterns on the
event type (``fnmatch.fnmatchcase`` rules: ``*`` any run of characters, dots
included; ``?`` one character; ``[...]``/``[!...]`` a class; case-sensitive)
and matches when any of them does: :func:`matches`, for one subscription.
Scanning every subscription per event costs events x patterns;
:class:`PatternIndex` instead sorts patterns by kind:

- *exact* (no ``*``, ``?`` or ``[``): a dict lookup of the type;
- *prefix* (``order.*``, ``*``): a dict lookup of each indexed prefix length of the type;
- *suffix* (``*.failed``): the same from the end;
- anything else: matched with ``fnmatchcase``, once per distinct pattern.

The answer for a type is memoised (event types are few), so a batch of
events of a handful of types costs a handful of lookups. The index is
immutable once built: rebuild it when the subscriptions change.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

PatternKind = Literal["exact", "prefix", "suffix", "glob"]

_META = frozenset("*?[")
#: Distinct event types whose answer is remembered; past it the memo starts over.
MEMO_SIZE = 4096


def matches(name: str, patterns: Collection[str]) -> bool:
    """Whether any of ``patterns`` matches the event type ``name`` (none: never)."""
    return "*" in patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def classify(pattern: str) -> tuple[PatternKind, str]:
    """The pattern's kind and its literal part (the whole pattern for ``glob``).

    ``order.*`` -> ``("prefix", "order.")``; ``*`` -> ``("prefix", "")``;
    ``*.failed`` -> ``("suffix", ".failed")``; ``a?c`` -> ``("glob", "a?c")``.
    """
    if not _META.intersection(pattern):
        return "exact", pattern
    head = pattern.rstrip("*")
    if not _META.intersection(head):
        return "prefix", head
    tail = pattern.lstrip("*")
    if not _META.intersection(tail):
        return "suffix", tail
    return "glob", pattern


class PatternIndex(Generic[T]):
    """Values filed under glob patterns; :meth:`match` finds those with a matching pattern."""

    def __init__(self) -> None:
        self._values: list[T] = []
        self._exact: dict[str, set[int]] = {}
        self._prefix: dict[str, set[int]] = {}
        self._suffix: dict[str, set[int]] = {}
        self._glob: dict[str, set[int]] = {}
        self._tables = {
            "exact": self._exact,
            "prefix": self._prefix,
            "suffix": self._suffix,
            "glob": self._glob,
        }
        #: Distinct prefix and suffix lengths, ascending; None: to be computed.
        self._lengths: tuple[list[int], list[int]] | None = None
        self._memo: dict[str, list[T]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def add(self, patterns: Iterable[str], value: T) -> None:
        """Index ``value`` under ``patterns`` (a value with no pattern never matches)."""
        position = len(self._values)
        self._values.append(value)
        for pattern in patterns:
            kind, literal = classify(pattern)
            self._tables[kind].setdefault(literal, set()).add(position)
        self._lengths = None
        self._memo.clear()

    def match(self, name: str) -> list[T]:
        """The values any of whose patterns match ``name``, each once, in the order added."""
        found = self._memo.get(name)
        if found is None:
            found = [self._values[i] for i in sorted(self._positions(name))]
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[name] = found
        return found

    def _positions(self, name: str) -> set[int]:
        if self._lengths is None:
            self._lengths = (
                sorted({len(p) for p in self._prefix}),
                sorted({len(s) for s in self._suffix}),
            )
        prefix_lengths, suffix_lengths = self._lengths
        hits: set[int] = set()
        exact = self._exact.get(name)
        if exact:
            hits |= exact
        size = len(name)
        for length in prefix_lengths:
            if length > size:
                break
            prefixed = self._prefix.get(name[:length])
            if prefixed:
                hits |= prefixed
        for length in suffix_lengths:
            if length > size:
                break
            suffixed = self._suffix.get(name[size - length :])
            if suffixed:
                hits |= suffixed
        for pattern, positions in self._glob.items():
            if not positions <= hits and matches(name, (pattern,)):
                hits |= positions
        return hits
