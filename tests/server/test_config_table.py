"""The server's settings table (config.SETTINGS) drives its flags, its variables,
ServerConfig and the docs: one row per setting, nothing written twice."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from gradserve_server import config
from gradserve_server.config import (
    BUDGET_DEFAULTS,
    LIMIT_DEFAULTS,
    SECTIONS,
    SETTINGS,
    ServerConfig,
    WorkerBudgets,
    build_parser,
    parse_config,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_each_row_is_one_flag_of_the_parser() -> None:
    flags = [a.option_strings[0] for a in build_parser()._actions if a.dest != "help"]
    assert flags == [s.flag for s in SETTINGS]
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_the_rows_fill_every_field_of_the_config_and_no_other() -> None:
    targets = [s.target.rpartition(".") for s in SETTINGS]
    top = {key for group, _, key in targets if not group}
    nested = {"limits", "budgets", "workers"}
    assert top | nested == {f.name for f in dataclasses.fields(ServerConfig)}
    assert {k for g, _, k in targets if g == "workers"} == {
        f.name for f in dataclasses.fields(WorkerBudgets)
    }
    assert {k for g, _, k in targets if g == "limits"} == set(LIMIT_DEFAULTS)
    assert {k for g, _, k in targets if g == "budgets"} == set(BUDGET_DEFAULTS)


def test_the_dataclass_defaults_are_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GRADSERVE_") or name == "RAY_ADDRESS":
            monkeypatch.delenv(name)
    assert parse_config([]) == ServerConfig()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.flag)
def test_every_setting_is_documented_in_its_section_and_in_deployment(
    setting: config.Setting,
) -> None:
    deployment = (DOCS / "deployment.md").read_text()
    assert re.search(rf"^\| `{setting.variable}` \|", deployment, re.M), setting.variable
    page = SECTIONS[setting.section]
    if page != "deployment.md":
        text = (DOCS / page).read_text()  # `--flag` or `--flag VALUE`
        assert re.search(rf"`{re.escape(setting.flag)}[` ]", text), f"{setting.flag} in {page}"
