"""Chain state across clean stops and crashes: sequence numbers never repeat."""

from pathlib import Path

import pytest

from appliance.agent.chain import ChainState
from appliance.errors import CommandError


def test_fresh_box_starts_at_zero_and_takes_a_lease(tmp_path: Path) -> None:
    chain = ChainState(tmp_path / "chain.json", lease=10)
    start = chain.start()
    assert (start.seq, start.prev_sig) == (0, b"")
    assert '"seq_lease": 10' in (tmp_path / "chain.json").read_text()


def test_clean_stop_continues_the_chain_exactly(tmp_path: Path) -> None:
    chain = ChainState(tmp_path / "chain.json", lease=10)
    chain.start()
    chain.finish(7, b"\x01" * 64)
    again = ChainState(tmp_path / "chain.json", lease=10).start()
    assert again.clean and again.seq == 7 and again.prev_sig == b"\x01" * 64


def test_crash_resumes_past_the_lease_with_a_new_chain(tmp_path: Path) -> None:
    chain = ChainState(tmp_path / "chain.json", lease=10)
    chain.start()
    for seq in range(1, 26):  # sealing 25 records extends the lease twice
        chain.reserve(seq)
    # killed here: no finish()
    after = ChainState(tmp_path / "chain.json", lease=10).start()
    assert not after.clean and after.prev_sig == b""
    assert after.seq >= 25  # never reuses a number that may have been sealed


def test_unreadable_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "chain.json").write_text("{torn")
    with pytest.raises(CommandError, match="move it aside"):
        ChainState(tmp_path / "chain.json").start()
