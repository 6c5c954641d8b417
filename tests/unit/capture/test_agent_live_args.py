"""`infraspectre bench live` refuses bad arguments with a one-line error, starting nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from appliance.devkit.capture.agentlive import _bench
from appliance.errors import CommandError


@pytest.mark.parametrize(
    ("rates", "duration", "idle", "message"),
    [
        ("2k", 1.0, 1.0, "--rates: not a comma-separated list of integers: '2k'"),
        ("", 1.0, 1.0, "--rates: give at least one rate"),
        ("1000,0", 1.0, 1.0, "--rates: give at least one rate"),
        ("1000", 0.0, 1.0, "--duration: must be above 0"),
        ("1000", 1.0, -1.0, "--idle: must be above 0"),
    ],
)
def test_bad_arguments_are_refused(rates: str, duration: float, idle: float, message: str) -> None:
    args = argparse.Namespace(
        rates=rates, duration=duration, idle=idle, cache=Path("unused"), json=True
    )
    with pytest.raises(CommandError) as err:
        _bench(args)
    assert message in str(err.value) and "\n" not in str(err.value)
