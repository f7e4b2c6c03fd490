"""Strict JSON, the one copy of its rules: no duplicate member names, no NaN / Infinity, text
without unpaired surrogates.

Python's :mod:`json` accepts all three (the last duplicate wins, ``NaN`` parses, ``"\\ud800"``
decodes to a string UTF-8 cannot encode). The manifest parser and the checkpoint reader both
refuse them, each with its own error class and wording, through these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Fail = Callable[[str], Exception]  # builds the error for the offending name or literal


def unique_keys(fail: Fail) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """An ``object_pairs_hook`` that raises ``fail(name)`` for a member name given twice."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):  # rare: find the culprit only then
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise fail(k)
                seen.add(k)
        return out

    return hook


def no_constants(fail: Fail) -> Callable[[str], Any]:
    """A ``parse_constant`` hook that raises ``fail(literal)`` for NaN, Infinity, -Infinity."""

    def hook(name: str) -> Any:
        raise fail(name)

    return hook


def is_text(value: str) -> bool:
    """True unless ``value`` holds an unpaired surrogate (which only a ``\\u`` escape can make)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_non_text(doc: Any) -> str | None:
    """The first string or member name in ``doc`` that is not text, or None."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            bad = next((k for k in node if isinstance(k, str) and not is_text(k)), None)
            if bad is not None:
                return bad
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, str) and not is_text(node):
            return node
    return None
