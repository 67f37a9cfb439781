"""How the fault matrix judges a row: the SDKs by time, Claude Code (unseedable jitter) on the wire."""

from __future__ import annotations

from tests.e2e.faultmatrix import Attempt, Outcome, Row, Scenario

CLAUDE = Scenario(
    "429 then 529", ({"fault": "429", "retry_after": 1}, {"fault": "529"}), clients=("claude-code",)
)
SDK = Scenario("529", ({"fault": "529"},))


def run(seconds: float, *answers: tuple[int, tuple[tuple[str, str], ...], float], ok: bool = True) -> Outcome:
    """A run whose attempts were answered with (status, retry headers, seconds answering), one a second."""
    return Outcome(
        ok,
        seconds,
        None if ok else "OverloadedError 529",
        tuple(
            Attempt(float(i), "POST /v1/messages", status, asks, i + took)
            for i, (status, asks, took) in enumerate(answers)
        ),
    )


RA1 = (("retry-after", "1"), ("x-should-retry", "true"))
RETRY = (("x-should-retry", "true"),)
DIRECT = run(4.0, (429, RA1, 0.003), (529, RETRY, 0.002), (200, (), 0.01))


def test_claude_code_rows_are_judged_on_the_wire_not_on_its_jitter() -> None:
    # the same answers, the client's own backoff 20 % longer this time: passes (time alone would not)
    assert Row(
        CLAUDE, "claude-code", DIRECT, run(5.5, (429, RA1, 0.008), (529, RETRY, 0.006), (200, (), 0.02))
    ).passed
    # fewer attempts (the gateway absorbed a fault): better, passes
    assert Row(CLAUDE, "claude-code", DIRECT, run(1.2, (429, RA1, 0.008), (200, (), 0.02))).passed


def test_what_a_gateway_could_make_worse_breaks_a_claude_code_row() -> None:
    def broken(through: Outcome) -> str | None:
        return Row(CLAUDE, "claude-code", DIRECT, through).broken()

    # a local refusal the client counts as one more attempt
    assert (
        broken(run(4.1, (429, RA1, 0.003), (429, RA1, 0.001), (529, RETRY, 0.002), (200, (), 0.01)))
        == "4 attempts, 3 directly"
    )
    # a longer wait asked
    longer = (("retry-after", "3"), ("x-should-retry", "true"))
    assert "waiting" in str(broken(run(6.0, (429, longer, 0.003), (529, RETRY, 0.002), (200, (), 0.01))))
    # answers slower by more than the slack
    assert (
        broken(run(5.5, (429, RA1, 0.003), (529, RETRY, 1.5), (200, (), 0.01)))
        == "answers slower than direct + slack"
    )
    # slower overall than the client's jitter can explain
    assert (
        broken(run(7.0, (429, RA1, 0.003), (529, RETRY, 0.002), (200, (), 0.01)))
        == "slower than the client's own jitter allows"
    )
    # a failure where direct succeeded, and a run nothing was seen of
    assert broken(run(4.0, (529, RETRY, 0.002), ok=False)) == "fails where direct succeeds"
    assert broken(Outcome(True, 4.0)) == "no attempt seen on the wire"


def test_sdk_rows_are_judged_by_time() -> None:
    direct = Outcome(True, 0.50)
    assert Row(SDK, "python-anthropic", direct, Outcome(True, 1.45)).passed
    assert Row(SDK, "python-anthropic", direct, Outcome(True, 1.55)).broken() == "slower than direct + slack"
    assert Row(SDK, "python-anthropic", Outcome(False, 1.4, "x"), Outcome(False, 1.3, "x")).passed
