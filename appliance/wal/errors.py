"""What the WAL raises to its callers (each message says what to do)."""

from __future__ import annotations

from appliance.errors import CommandError


class WalFull(Exception):
    """The log is at its bound and its policy is `refuse`: the caller must hold the record."""


class WalUnavailable(CommandError):
    """The WAL directory cannot be used (locked by another process, unwritable, full)."""


class WalLocked(WalUnavailable):
    """Another process has this WAL open."""
