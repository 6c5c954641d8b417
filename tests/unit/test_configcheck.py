"""`infraspectre config check FILE` and the global options accepted anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import build_parser, hoist_global_options, main

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "infraspectre.yaml"


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["config", "check", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_documented_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _check(capsys, str(EXAMPLE))
    assert (status, err) == (0, "")
    assert "valid for every component" in out


@pytest.mark.parametrize(
    ("text", "component", "key_path"),
    [
        ("capture:\n  meter:\n    idle_timout_s: 5\n", "all", "capture.meter.idle_timout_s"),
        ("capture:\n  meter:\n    max_flows: 3\n", "flows", "capture.meter.max_flows"),
        ("eventbus:\n  port: fifty\n", "bus", "eventbus.port"),
        ("agent:\n  bogus: 1\n", "agent", "agent.bogus"),
        ("wal:\n  nope: true\n", "wal", "wal.nope"),
        ("log:\n  level: VERBOSE\n", "all", "log.level"),
        ("capture:\n  filter: 'tcp port'\n", "agent", "capture.filter"),
        ("storage: [1, 2]\n", "bus", "storage"),
        ("captur:\n  x: 1\n", "bus", "captur: unknown section"),
    ],
)
def test_a_bad_file_fails_in_one_line_naming_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, component: str, key_path: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    status, out, err = _check(capsys, str(path), "--component", component)
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"infraspectre: {key_path}"), err


def test_a_component_checks_only_the_sections_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent-only-bad.yaml"
    path.write_text("agent:\n  bogus: 1\n")
    assert _check(capsys, str(path), "--component", "bus")[0] == 0
    assert _check(capsys, str(path))[0] == 1


def test_environment_overrides_are_checked_only_with_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    monkeypatch.setenv("BUS_SERVER_PORT", "abc")
    assert _check(capsys, str(path))[0] == 0
    status, _, err = _check(capsys, str(path), "--env")
    assert status == 1 and "eventbus.port: BUS_SERVER_PORT='abc'" in err


def test_missing_file_and_broken_yaml_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _check(capsys, str(tmp_path / "none.yaml"))
    assert status == 1 and "no such file" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("eventbus: [\n")
    status, _, err = _check(capsys, str(broken))
    assert status == 1 and "not valid YAML" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "config", "check", "F"],
        ["config", "--log-level", "Debug", "check", "F"],
        ["config", "check", "F", "--log-level", "DEBUG"],
        ["config", "check", "--log-level=dEbUg", "F"],
    ],
)
def test_log_level_is_accepted_anywhere_and_in_any_case(argv: list[str]) -> None:
    args = build_parser().parse_args(hoist_global_options(argv))
    assert (args.log_level, args.command, str(args.file)) == ("DEBUG", "config", "F")


def test_hoisting_leaves_what_follows_a_double_dash() -> None:
    argv = ["qemu", "boot", "x", "--", "--log-level", "debug"]
    assert hoist_global_options(argv) == argv
    assert hoist_global_options(["a", "--log-format", "json", "b"]) == [
        "--log-format",
        "json",
        "a",
        "b",
    ]


def test_a_bad_log_level_after_the_command_is_refused_like_one_before_it() -> None:
    import subprocess
    import sys

    argv = ["config", "check", str(EXAMPLE), "--log-level", "nonsense"]
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--log-level" in proc.stderr  # argparse's choices
