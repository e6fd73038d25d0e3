"""Fixtures live in tests/support/fixtures.py, loaded by the root conftest.py."""
