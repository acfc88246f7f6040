"""The compile client's decisions (meshcc.client.decisions): distcc's retry, backoff and
fallback rules, one outcome at a time. Pure: no processes, sockets, files or root."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcc.client import decisions as d
from meshcc.exitcodes import (
    EXIT_CONNECT_FAILED,
    EXIT_DISTCC_FAILED,
    EXIT_IO_ERROR,
    EXIT_NO_HOSTS,
)

SRC = "src/foo.c"
DEFAULT = d.Settings()
NO_FALLBACK = d.Settings(fallback=False)
SKIP_RETRY = d.Settings(skip_local_retry=True)

exit_codes = st.integers(min_value=0, max_value=255)
failing_codes = st.integers(min_value=1, max_value=255)
signals = st.integers(min_value=1, max_value=64)
settings = st.builds(d.Settings, fallback=st.booleans(), skip_local_retry=st.booleans())


def exited(code: int) -> int:
    """The wait status of a process that exited with ``code`` (as distccd sends in STAT)."""
    return code << 8


def killed(sig: int, core: bool = False) -> int:
    """The wait status of a process killed by ``sig``."""
    return sig | (0x80 if core else 0)


def plan(s: d.Settings = DEFAULT) -> d.Plan:
    return d.Plan(s, SRC)


# --------------------------------------------------------------------------- settings


@given(st.one_of(st.none(), st.text(max_size=5)))
def test_only_fallback_0_disables_fallback(value: str | None) -> None:
    env = {} if value is None else {"DISTCC_FALLBACK": value}
    assert d.Settings.from_environ(env).fallback is (value != "0")


@given(st.one_of(st.none(), st.text(max_size=5)))
def test_skip_local_retry_is_set_by_any_value(value: str | None) -> None:
    env = {} if value is None else {"DISTCC_SKIP_LOCAL_RETRY": value}
    assert d.Settings.from_environ(env).skip_local_retry is (value is not None)


def test_default_settings() -> None:
    s = d.Settings.from_environ({})
    assert (s.fallback, s.skip_local_retry) == (True, False)


# --------------------------------------------------------------------------- before any host


@pytest.mark.parametrize("outcome", [d.Plan.distcc_dir_unusable, d.Plan.bad_host_list])
def test_cannot_distribute_compiles_locally_with_a_warning(
    outcome: Callable[[d.Plan, str], d.CompileLocally | d.Fail],
) -> None:
    act = outcome(plan(), "the reason")
    assert isinstance(act, d.CompileLocally)
    assert act.warn and act.message == f"the reason; compiling {SRC} locally"
    act = outcome(plan(NO_FALLBACK), "the reason")
    assert isinstance(act, d.Fail)
    assert act.code == EXIT_NO_HOSTS  # distcc 3.4's code for these with fallback off
    assert act.message == f"the reason; not compiling {SRC} locally (DISTCC_FALLBACK=0)"


def test_no_host_left_warns_then_compiles_locally() -> None:
    act = plan().no_host_left("failed to distribute x to h (refused)", quiet=False)
    assert isinstance(act, d.CompileLocally)
    assert act.warn
    assert act.message == "failed to distribute x to h (refused), compiling locally"


def test_no_host_left_quietly() -> None:
    """The daemon's normal "no matching peer" on a lone box is verbose-only."""
    act = plan().no_host_left("meshcc daemon: no peer (for x)", quiet=True)
    assert isinstance(act, d.CompileLocally)
    assert not act.warn
    assert act.message == "meshcc daemon: no peer (for x); compiling locally"


@given(st.booleans())
def test_no_host_left_without_fallback_is_exit_116(quiet: bool) -> None:
    act = plan(NO_FALLBACK).no_host_left("no hosts to distribute x to", quiet)
    assert isinstance(act, d.Fail)
    assert act.code == EXIT_NO_HOSTS == 116
    assert act.message == "no hosts to distribute x to; not compiling locally (DISTCC_FALLBACK=0)"


# --------------------------------------------------------------------------- a host failed


@given(st.integers(min_value=100, max_value=120), settings)
def test_transport_failure_tries_the_next_host(code: int, s: d.Settings) -> None:
    """Whatever the settings (fallback only matters once no host is left)."""
    act = d.Plan(s, SRC).transport_failed("Connection refused", code)
    assert isinstance(act, d.TryNextHost)
    assert act.why == "Connection refused"
    assert act.connect_failed is (code == EXIT_CONNECT_FAILED)


def test_refusal_tries_the_next_host_with_the_reason() -> None:
    act = plan(NO_FALLBACK).refused("-fplugin= runs code on the server")
    assert isinstance(act, d.TryNextHost)
    assert act.why == "refused: -fplugin= runs code on the server"
    assert not act.connect_failed


@given(failing_codes, settings)
def test_cpp_failure_is_final(code: int, s: d.Settings) -> None:
    """No local retry (it would fail the same way); cpp's stderr shown; host not blamed."""
    act = d.Plan(s, SRC).cpp_failed(code)
    assert isinstance(act, d.Finish)
    assert (act.code, act.verdict, act.show, act.note) == (code, d.NO_OPINION, d.SHOW_CPP, "")


def test_unreadable_source_compiles_locally_quietly() -> None:
    act = plan().source_unreadable()
    assert isinstance(act, d.CompileLocally)
    assert (act.message, act.warn, act.verdict) == ("", False, d.NO_OPINION)


# --------------------------------------------------------------------------- remote compiler ran


@given(settings)
def test_success_is_delivered_and_forgives_the_host(s: d.Settings) -> None:
    p = d.Plan(s, SRC)
    assert isinstance(p.replied(0), d.Deliver)
    act = p.delivered()
    assert (act.code, act.verdict, act.show) == (0, d.FORGIVE, d.SHOW_NOTHING)


def test_unwritable_output_compiles_locally_with_a_warning() -> None:
    p = plan()
    p.replied(0)
    act = p.output_unwritable("obj/foo.o", "No space left on device")
    assert isinstance(act, d.CompileLocally)
    assert act.warn and act.verdict is d.NO_OPINION
    assert act.message == "cannot write obj/foo.o: No space left on device; compiling locally"


def test_unwritable_output_without_fallback_is_an_io_error() -> None:
    p = plan(NO_FALLBACK)
    p.replied(0)
    act = p.output_unwritable("obj/foo.o", "Permission denied")
    assert isinstance(act, d.Fail)
    assert act.code == EXIT_IO_ERROR
    assert act.message == "cannot write obj/foo.o: Permission denied"


@given(failing_codes)
def test_compile_error_is_retried_locally(code: int) -> None:
    act = plan().replied(exited(code))
    assert isinstance(act, d.RetryLocally)
    assert act.remote_code == code


@given(failing_codes)
def test_same_result_locally_means_the_host_is_innocent(code: int) -> None:
    p = plan()
    p.replied(exited(code))
    act = p.retried_locally(code)
    assert (act.code, act.verdict, act.show, act.note) == (code, d.NO_OPINION, d.SHOW_NOTHING, "")


@given(failing_codes, exit_codes)
def test_different_result_locally_backs_the_host_off(remote: int, local: int) -> None:
    if local == remote:
        return
    p = plan()
    p.replied(exited(remote))
    act = p.retried_locally(local)
    assert (act.code, act.verdict, act.show) == (local, d.BACK_OFF, d.SHOW_NOTHING)
    assert act.note == f"local compile exited {local}, remote {remote}"


@given(signals, st.booleans(), exit_codes)
def test_remote_crash_is_retried_locally_and_backs_off(sig: int, core: bool, local: int) -> None:
    """Even with DISTCC_SKIP_LOCAL_RETRY, and whatever the local result."""
    for s in (DEFAULT, SKIP_RETRY):
        p = plan(s)
        act = p.replied(killed(sig, core))
        assert isinstance(act, d.RetryLocally)
        assert act.remote_code == 128 + sig
        end = p.retried_locally(local)
        assert (end.code, end.verdict, end.show, end.note) == (
            local,
            d.BACK_OFF,
            d.SHOW_NOTHING,
            "",
        )


@given(failing_codes)
def test_skip_local_retry_makes_a_compile_error_final(code: int) -> None:
    act = plan(SKIP_RETRY).replied(exited(code))
    assert isinstance(act, d.Finish)
    assert (act.code, act.verdict, act.show) == (code, d.NO_OPINION, d.SHOW_ALL)


@given(failing_codes, st.booleans())
def test_without_fallback_a_compile_error_is_final(code: int, skip: bool) -> None:
    act = plan(d.Settings(fallback=False, skip_local_retry=skip)).replied(exited(code))
    assert isinstance(act, d.Finish)
    assert (act.code, act.verdict, act.show) == (code, d.NO_OPINION, d.SHOW_ALL)


@given(signals)
def test_without_fallback_a_remote_crash_is_final_and_backs_off(sig: int) -> None:
    act = plan(NO_FALLBACK).replied(killed(sig))
    assert isinstance(act, d.Finish)
    assert (act.code, act.verdict, act.show) == (128 + sig, d.BACK_OFF, d.SHOW_ALL)


@given(settings, st.integers(min_value=0, max_value=0xFFFF))
def test_reply_outcomes_are_consistent(s: d.Settings, status: int) -> None:
    """For any settings and STAT: success is delivered, anything else ends with the remote
    code or a local retry, and a local retry happens only when fallback is on."""
    act = d.Plan(s, SRC).replied(status)
    if status == 0:
        assert isinstance(act, d.Deliver)
    elif isinstance(act, d.RetryLocally):
        assert s.fallback
        assert act.remote_code == d.exit_code(status)
    else:
        assert isinstance(act, d.Finish)
        assert act.code == d.exit_code(status)
        assert act.show == d.SHOW_ALL
        assert act.verdict in (d.NO_OPINION, d.BACK_OFF)


def test_retried_locally_needs_a_reply_first() -> None:
    with pytest.raises(AssertionError):
        plan().retried_locally(0)


# --------------------------------------------------------------------------- host choice


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=-5, max_value=600))
def test_attempt_cap_only_without_backoff(attempts: int, period: int) -> None:
    """distcc 3.4 loops forever with DISTCC_BACKOFF_PERIOD=0; we stop after 3 (#438)."""
    allowed = d.may_try_host(attempts, period)
    if period > 0:
        assert allowed
    else:
        assert allowed is (attempts < d.MAX_REMOTE_ATTEMPTS_NO_BACKOFF == 3)
    assert d.backs_off(period) is (period > 0)


def test_host_list_exhausted_messages() -> None:
    assert d.host_list_exhausted("x.c", "h:1 (refused: no)", True) == (
        "failed to distribute x.c to h:1 (refused: no)",
        False,
    )
    assert d.host_list_exhausted("x.c", "", True) == (
        "no usable host for x.c (all down or backed off)",
        False,
    )
    assert d.host_list_exhausted("x.c", "", False) == ("no hosts to distribute x.c to", False)


def test_leases_exhausted_messages() -> None:
    assert d.leases_exhausted("x.c", "h:1 (timed out)", "daemon broke", "busy") == (
        "failed to distribute x.c to h:1 (timed out)",
        False,
    )
    assert d.leases_exhausted("x.c", "", "meshcc daemon error: bad", "busy") == (
        "meshcc daemon error: bad; not distributing x.c",
        False,
    )
    assert d.leases_exhausted("x.c", "", "", "no matching peer") == (
        "meshcc daemon: no matching peer (for x.c)",
        True,
    )


@pytest.mark.parametrize(
    ("protocol", "lzo", "expected"),
    [
        (1, True, (1, False)),
        (1, False, (1, False)),
        (2, True, (2, False)),
        (2, False, (1, True)),
        (3, True, (2, False)),  # ,cpp,lzo: no pump mode here, plain protocol 2
        (3, False, (1, True)),
    ],
)
def test_wire_version(protocol: int, lzo: bool, expected: tuple[int, bool]) -> None:
    asked = []

    def lzo_available() -> bool:
        asked.append(True)
        return lzo

    assert d.wire_version(protocol, lzo_available) == expected
    assert bool(asked) is (protocol > 1)  # the codec is looked up only when it matters


# --------------------------------------------------------------------------- wait statuses


@given(exit_codes)
def test_exit_code_of_an_exit(code: int) -> None:
    assert d.exit_code(exited(code)) == code


@given(signals, st.booleans())
def test_exit_code_of_a_signal(sig: int, core: bool) -> None:
    assert d.exit_code(killed(sig, core)) == 128 + sig


def test_exit_code_of_a_stopped_process() -> None:
    stopped = (19 << 8) | 0x7F  # WIFSTOPPED: neither exited nor signalled
    assert not os.WIFEXITED(stopped) and not os.WIFSIGNALED(stopped)
    assert d.exit_code(stopped) == EXIT_DISTCC_FAILED


def test_an_empty_object_for_a_successful_compile_is_a_host_failure() -> None:
    act = d.Plan(DEFAULT, "a.c").empty_object()
    assert isinstance(act, d.TryNextHost) and not act.connect_failed
    assert "empty object" in act.why
