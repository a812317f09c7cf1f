"""The router's view of a request: what the processor makes of hints and max_tokens."""

from __future__ import annotations

from processor.routing import route_request
from router.hints import AgentHints


def test_an_osl_beyond_the_longest_sequence_is_capped() -> None:
    """osl up to 2^31-1 is a valid hint; counted as is, one request added ~33M decode blocks
    to its worker's load until it ended, so that worker looked full to everyone else."""
    hints = AgentHints(osl=2**31 - 1)
    assert route_request("r", hints, 1000, None, max_len=32_768).osl == 31_768
    assert route_request("r", hints, 1000, 4096, max_len=32_768).osl == 31_768  # hint first
    assert route_request("r", AgentHints(osl=512), 1000, None, max_len=32_768).osl == 512
    assert route_request("r", hints, 40_000, None, max_len=32_768).osl == 1  # refused anyway


def test_without_a_known_length_the_hint_stands() -> None:
    assert route_request("r", AgentHints(osl=2**31 - 1), 1000).osl == 2**31 - 1
    assert route_request("r", AgentHints(), 1000, 300).osl == 300
    assert route_request("r", AgentHints(), 1000, None).osl is None
