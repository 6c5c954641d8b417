"""A PKI of a test's own, for tests that change it (revocation): never the session's."""

from __future__ import annotations

from pathlib import Path

from appliance.pki import init_pki, issue_agent


def fresh_pki(directory: Path, agents: tuple[str, ...] = ("branch-1", "branch-2")) -> Path:
    """An org CA in directory with these agents issued and trusted."""
    init_pki(directory, [])
    for agent in agents:
        issue_agent(directory, agent)
    return directory
