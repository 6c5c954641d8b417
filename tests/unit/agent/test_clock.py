"""Following the bus's clock: forward only, beyond a threshold, rate-limited."""

from __future__ import annotations

import pytest

from appliance.agent.clock import MAX_SLEW_NS, ClockFollower, pending_slew_ns

S = 1_000_000_000
NOW = 1_800_000_000 * S


class Box:
    """A clock that a step moves, and a monotonic one the test advances."""

    def __init__(self) -> None:
        self.ns = NOW
        self.mono = 100.0
        self.steps: list[int] = []
        self.slews: list[int] = []
        self.saves = 0

    def follower(self, enabled: bool = True, fail: bool = False) -> ClockFollower:
        def step(ns: int) -> None:
            if fail:
                raise PermissionError(1, "Operation not permitted")
            self.steps.append(ns)
            self.ns = ns

        def save() -> None:
            self.saves += 1

        return ClockFollower(
            enabled=enabled, step_to_ns=step, slew_by_ns=self.slews.append, save_floor=save,
            clock_ns=lambda: self.ns, monotonic=lambda: self.mono,
        )  # fmt: skip


def test_a_clock_behind_the_bus_is_stepped_forward_and_the_floor_saved() -> None:
    box = Box()
    f = box.follower()
    # the call left at NOW, came back 40 ms later; the bus stamped NOW + 3600 s + 20 ms
    f.observe(NOW + 3600 * S + 20_000_000, NOW, NOW + 40_000_000)
    assert box.steps == [NOW + 3600 * S]
    assert f.steps == 1 and box.saves == 1 and f.offset_s == 0.0


def test_a_clock_ahead_is_slewed_back_never_stepped() -> None:
    box = Box()
    f = box.follower()
    f.observe(NOW - 600 * S, NOW, NOW)
    assert box.steps == [] and box.slews == [-600 * S] and f.offset_s == pytest.approx(-600)
    assert box.saves == 0  # the floor only ever moves forward


def test_a_slew_is_clamped_to_what_adjtime_takes() -> None:
    box = Box()
    f = box.follower()
    f.observe(NOW - 100_000 * S, NOW, NOW)
    assert box.slews == [-MAX_SLEW_NS]


def test_the_adjtime_binding_reads_the_pending_correction() -> None:
    assert isinstance(pending_slew_ns(), int)  # reading changes nothing


def test_small_offsets_are_left_alone() -> None:
    box = Box()
    f = box.follower()
    f.observe(NOW + S, NOW, NOW)  # within the 2 s threshold
    assert box.steps == [] and f.offset_s == pytest.approx(1.0)


def test_steps_are_rate_limited() -> None:
    box = Box()
    f = box.follower()
    f.observe(NOW + 100 * S, NOW, NOW)
    lag = box.ns + 50 * S
    f.observe(lag, box.ns, box.ns)  # again behind, 10 s later: too soon
    box.mono += 10
    f.observe(lag, box.ns, box.ns)
    assert len(box.steps) == 1
    box.mono += 60
    f.observe(box.ns + 50 * S, box.ns, box.ns)
    assert len(box.steps) == 2


def test_disabled_only_measures() -> None:
    box = Box()
    f = box.follower(enabled=False)
    f.observe(NOW + 3600 * S, NOW, NOW)
    f.observe(NOW - 3600 * S, NOW, NOW)
    assert box.steps == [] and box.slews == [] and box.saves == 0
    assert f.offset_s == pytest.approx(-3600)


def test_a_step_the_system_refuses_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    box = Box()
    f = box.follower(fail=True)
    f.observe(NOW + 3600 * S, NOW, NOW)
    assert f.steps == 0 and box.saves == 0
    assert "cannot step the clock" in caplog.text
