"""The stop state: raised where nothing listens, noted (and said once) where something does."""

from __future__ import annotations

import signal

import pytest

from runner.signals import Stop, Stopper


def test_a_signal_where_nothing_listens_raises_stop_with_the_shell_s_exit_code() -> None:
    stopper = Stopper()
    with pytest.raises(Stop) as raised:
        stopper.handle(signal.SIGTERM, None)
    assert raised.value.exit_code == 143 and stopper.stop.is_set()


def test_a_listening_block_notes_the_signal_and_says_what_it_keeps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stopper = Stopper()
    with stopper.listening_while("the run ends KILLED"):
        stopper.handle(signal.SIGINT, None)  # no raise: the loop polls `stop`
    assert stopper.stop.is_set() and stopper.signum == signal.SIGINT
    assert capsys.readouterr().err == "runner: stopping on SIGINT: the run ends KILLED\n"


def test_a_signal_noted_quietly_is_said_when_a_loop_starts_listening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run's set-up notes a signal without a word; its loop, starting, says what it keeps."""
    stopper = Stopper()
    with stopper.listening_while(""):
        stopper.handle(signal.SIGHUP, None)
        assert capsys.readouterr().err == ""
        with stopper.listening_while("the run ends KILLED"):
            pass
    assert capsys.readouterr().err == "runner: stopping on SIGHUP: the run ends KILLED\n"
    assert stopper.listening is None  # put back: between jobs a signal raises again


def test_a_second_signal_says_the_run_is_still_ending(capsys: pytest.CaptureFixture[str]) -> None:
    stopper = Stopper()
    with stopper.listening_while("the run ends KILLED"):
        stopper.handle(signal.SIGINT, None)
        stopper.handle(signal.SIGINT, None)
    assert "SIGINT again: still ending the run as KILLED" in capsys.readouterr().err


def test_a_second_signal_while_the_run_is_set_up_says_it_is_still_stopping(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stopper = Stopper()
    with stopper.listening_while(""):
        stopper.handle(signal.SIGINT, None)
        stopper.handle(signal.SIGINT, None)
    assert capsys.readouterr().err.startswith("runner: SIGINT again: still stopping (")


def test_a_worker_s_stopper_is_quiet_and_never_raises(capsys: pytest.CaptureFixture[str]) -> None:
    """A joblib worker: the main process speaks for the sweep, and an exception while the
    worker hands its result back would break the launcher's pool (seen with Ctrl-C twice)."""
    stopper = Stopper()
    stopper.quiet = True
    stopper.handle(signal.SIGINT, None)
    stopper.handle(signal.SIGINT, None)  # a second signal: still no raise, no line
    assert stopper.stop.is_set() and capsys.readouterr().err == ""
