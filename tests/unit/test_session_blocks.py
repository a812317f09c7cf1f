"""The fast path's per-conversation block store: bounded, prefix-preserving, deterministic."""

from __future__ import annotations

import pytest

from frontend.session_blocks import SessionBlocks


def test_unknown_conversation_has_no_blocks() -> None:
    assert SessionBlocks().extend("nobody", 10) is None


def test_extend_keeps_the_last_prompt_and_adds_distinct_new_blocks() -> None:
    s = SessionBlocks()
    s.remember("c", [11, 12, 13])
    first = s.extend("c", 6)
    assert first[:3] == [11, 12, 13] and len(first) == 6 and len(set(first)) == 6
    # The next turn starts with this one's blocks, synthetic ones included.
    assert s.extend("c", 8)[:6] == first
    # An estimate shorter than what is known never drops known blocks.
    assert s.extend("c", 2) == s.extend("c", 8)[:8]
    # Same inputs, same synthetic hashes (chained like the real ones, no randomness).
    other = SessionBlocks()
    other.remember("c", [11, 12, 13])
    assert other.extend("c", 6) == first
    # A new full-path prompt replaces what was extended.
    s.remember("c", [7])
    assert s.extend("c", 1) == [7]


def test_bounded_least_recently_used_first() -> None:
    s = SessionBlocks(max_sessions=3)
    for name in "abc":
        s.remember(name, [1, 2])
    s.extend("a", 2)  # touched: now the most recent
    s.remember("d", [3])
    assert len(s) == 3
    assert s.extend("b", 2) is None and s.extend("a", 2) == [1, 2]
    with pytest.raises(ValueError):
        SessionBlocks(max_sessions=0)
