"""Chained block hashes: equal blocks after different prefixes must not count as shared."""

from __future__ import annotations

from processor.routing import block_hashes, chain_hashes

BS = 64


def _chained_block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    return chain_hashes(block_hashes(token_ids, block_size))


def test_a_block_hash_covers_everything_before_it() -> None:
    a = _chained_block_hashes([1] * 128 + [2] * 64 + [5] * 10, BS)
    b = _chained_block_hashes([3] * 64 + [1] * 64 + [2] * 64, BS)
    c = _chained_block_hashes([1] * 128 + [2] * 64 + [7] * 64, BS)
    assert len(a) == 3 and len(b) == 3  # full blocks only
    assert len(set(a)) == 3  # [1]*64 twice: two different blocks in the chain
    assert not set(a) & set(b)  # same block contents, different prefixes
    assert c[:3] == a  # same prefix, same hashes
    assert _chained_block_hashes([], BS) == []
