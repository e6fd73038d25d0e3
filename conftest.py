"""Shared fixtures for tests/ and examples/: a real Ray cluster and a real server."""

pytest_plugins = ["support.fixtures"]
