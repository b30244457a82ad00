"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_ABSENT = object()


def record(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with each of ``fields`` present three times in four."""
    maybe = {
        name: st.sampled_from([True, True, True, False]).flatmap(
            lambda present, value=value: value if present else st.just(_ABSENT)
        )
        for name, value in fields.items()
    }
    return st.fixed_dictionaries(maybe).map(
        lambda drawn: {name: value for name, value in drawn.items() if value is not _ABSENT}
    )
