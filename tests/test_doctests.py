"""The docstring examples of the SDK, the server and the language run, and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

# module -> whether it has examples that run without a server (the SDK's client
# examples are marked +SKIP: they need one, and tests/e2e covers them)
MODULES = {
    "gradserve": False,
    "gradserve._client": False,
    "gradserve._async_client": False,
    "gradserve.jobs": False,
    "gradserve.cli": True,
    "gradserve.plot": True,
    "gradserve.sampling": True,
    "gradserve.names": True,
    "gradserve._suggest": True,
    "gradserve_server.planner": True,
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if MODULES[name]:
        assert result.attempted > 0
