"""Fixtures of the capture tests (helpers live in capture_helpers)."""

from testsupport.capture_helpers import meter_frames

__all__ = ["meter_frames"]
