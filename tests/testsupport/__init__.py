"""Helpers shared by test tiers (importable as `testsupport`; tests/conftest.py puts tests/ on
sys.path)."""
