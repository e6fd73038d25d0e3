"""The random-program differential test: programs drawn from the language's table, every
operation through the worker's real code path, against the independent reference.

``make test`` runs the saved corpus and a short hypothesis run (``GRADSERVE_FUZZ_SECONDS``,
default 12 s, and a third of that in float32 with the certificate; hypothesis seed
``GRADSERVE_FUZZ_SEED``, default 0); ``make fuzz`` runs for minutes from a fresh seed.
Each run prints how many programs and results it compared. A program that fails is
printed with the lines to save it into tests/fuzz/corpus/, where it runs on every
``make test`` from then on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gradserve_workers.lang.table import FUNCTIONS
from gradserve_workers.ops import computation

from .differential import (
    Mismatch,
    Stats,
    Unusable,
    certify_in_float32,
    check_program,
    finite_seconds,
    seed_of,
)
from .grammar import NOT_GENERATED, RULES, Program, corpus, program

SECONDS = finite_seconds(os.environ.get("GRADSERVE_FUZZ_SECONDS"), 12.0)
MAX_PROGRAMS = int(os.environ.get("GRADSERVE_FUZZ_PROGRAMS", "1000000"))
FIRST_SEED = int(os.environ.get("GRADSERVE_FUZZ_SEED", "0"))
PER_ROUND = 10
CORPUS = corpus()


def _report(capsys: pytest.CaptureFixture[str], what: str, stats: Stats) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {what}: {stats.summary()}")


def test_every_table_function_is_generated() -> None:
    generated = {r.name for r in RULES}
    missing = set(FUNCTIONS) - generated - set(NOT_GENERATED)
    assert not missing, f"no rule generates {sorted(missing)}: add one to tests/fuzz/grammar.py"
    assert generated <= set(FUNCTIONS), sorted(generated - set(FUNCTIONS))


def test_the_corpus_agrees_with_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(CORPUS) >= 10
    stats, stats32 = Stats(), Stats()
    for name, source in CORPUS:
        try:
            check_program(source, seed_of(source), stats)
            certify_in_float32(source, seed_of(source), stats32)
        except Unusable as exc:  # a saved program must stay usable
            raise AssertionError(f"corpus program {name} is unusable: {exc}") from None
    _report(capsys, "corpus", stats)
    _report(capsys, "corpus, float32 certificates", stats32)
    assert stats.programs == stats32.programs == len(CORPUS)


def _rounds(seconds: float, compare: Callable[[str, int, Stats], None]) -> tuple[Stats, int]:
    """Hypothesis rounds of a few programs each until ``seconds`` are spent; round k is
    hypothesis seed k + GRADSERVE_FUZZ_SEED, so a run is reproducible."""
    stats = Stats()
    deadline = time.monotonic() + seconds

    def check(prog: Program, points_seed: int) -> None:
        try:
            compare(prog.source, points_seed, stats)
        except Unusable:
            stats.unusable += 1

    rounds = 0
    while time.monotonic() < deadline and stats.programs < MAX_PROGRAMS:
        run = seed(FIRST_SEED + rounds)(
            settings(
                max_examples=PER_ROUND,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(given(program(), st.integers(0, 10_000))(check))
        )
        run()
        rounds += 1
    return stats, rounds


def test_random_programs_agree_with_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    stats, rounds = _rounds(SECONDS, check_program)
    _report(capsys, f"random programs ({SECONDS:.0f} s, seeds {FIRST_SEED}+{rounds})", stats)
    assert stats.programs >= 5, stats.summary()


def test_random_programs_in_float32_pass_their_certificate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seconds = SECONDS / 3
    stats, rounds = _rounds(seconds, certify_in_float32)
    _report(capsys, f"float32 certificates ({seconds:.0f} s, seeds {FIRST_SEED}+{rounds})", stats)
    assert stats.programs >= 3, stats.summary()


LU_PROGRAMS = [source for name, source in CORPUS if name.startswith("lu-")]


@pytest.mark.parametrize("source", LU_PROGRAMS[:2])
def test_the_differential_test_sees_torch_bug_when_routes_are_off(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the routes switched off, torch 2.13's nested forward AD is wrong on these
    programs, and the reference comparison and the certificate each say so on their
    own: the test sees what the routes hide. (Switching the routes off is the only
    patch: it exposes torch's behaviour, it does not stand in for ours.)"""
    monkeypatch.setattr(computation, "plan_routes", lambda *args, **kwargs: {})
    with pytest.raises(Mismatch, match="the derivative certificate failed"):
        check_program(source, seed_of(source), Stats())
    with pytest.raises(Mismatch, match="off by"):
        check_program(source, seed_of(source), Stats(), verify=False)
