"""The registry of operator-installed functions, in-process (no server)."""

from __future__ import annotations

import pytest
import torch

from gradserve_server.config import parse_config
from gradserve_workers import lang, registry
from gradserve_workers.actor import classify


@pytest.fixture(autouse=True)
def _clean_registry() -> None:
    registry.load([])  # every test starts with nothing enabled


def test_resolve_names_all_lists_and_unknown() -> None:
    assert {"quad_form", "quad_form_buggy"} <= set(registry.resolve_names("all"))
    assert registry.resolve_names(" quad_form, @quad_form_buggy,quad_form") == (
        "quad_form",
        "quad_form_buggy",
    )
    assert registry.resolve_names(None) == ()
    with pytest.raises(ValueError, match=r"nope is not installed.*quad_form"):
        registry.resolve_names("quad_form,nope")


def test_serve_refuses_an_uninstalled_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_config([]).functions == ()
    assert parse_config(["--functions", "quad_form"]).functions == ("quad_form",)
    monkeypatch.setenv("GRADSERVE_FUNCTIONS", "quad_form_buggy, quad_form")
    assert parse_config([]).functions == ("quad_form_buggy", "quad_form")
    with pytest.raises(SystemExit):
        parse_config(["--functions", "nope"])
    assert "nope is not installed" in capsys.readouterr().err


def test_reference_is_one_name_and_nothing_else() -> None:
    assert registry.reference(" @quad_form\n") == "quad_form"
    for source in ("quad_form", "@", "@a b", "@f(x)", "@torch.jit.script\ndef f(x): ..."):
        assert registry.reference(source) is None, source


def test_describe_takes_inputs_from_the_signature_or_an_attribute() -> None:
    def f(x: torch.Tensor, A: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        """Doc."""
        return x

    assert registry.describe("f", f) == registry.Registered("f", ("x", "A"), "Doc.", "")

    def g(*tensors: torch.Tensor) -> torch.Tensor:
        return tensors[0]

    with pytest.raises(TypeError, match="an `inputs` attribute"):
        registry.describe("g", g)
    g.inputs = ("a", "b")  # type: ignore[attr-defined]
    assert registry.describe("g", g).inputs == ("a", "b")


def test_a_registered_program_validates_compiles_and_runs() -> None:
    registry.load(["quad_form"])
    program = lang.parse_and_validate("@quad_form")
    assert program.inputs == ("x", "A")
    fn = lang.compile_function("@quad_form")
    x, A = torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    assert fn(x, A).item() == pytest.approx(1 + 4 + 4)
    with pytest.raises(lang.SpecError, match=r"takes \(x, A\)"):
        lang.parse_and_validate("@quad_form", known_inputs=["x"])


def test_unknown_names_list_the_enabled_ones() -> None:
    registry.load(["quad_form"])
    with pytest.raises(registry.UnknownFunctionError, match="enabled: @quad_form"):
        lang.parse_and_validate("@quad_form_buggy")


def test_a_raising_function_is_reported_by_type_and_message() -> None:
    registry.load(["raises"])
    fn = lang.compile_function("@raises")
    with pytest.raises(ValueError) as caught:
        fn(torch.ones(2))
    error = classify(caught.value)
    assert (error.kind, error.message) == (
        "invalid",
        "@raises raised ValueError: x must be positive definite",
    )
