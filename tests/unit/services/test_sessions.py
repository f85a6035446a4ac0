"""The daemon's session store on its own: saved, reloaded, serialised, bounded oldest-first."""

from __future__ import annotations

from pathlib import Path

import pytest

from nessa.errors import InvalidArgumentError
from nessa.metrics import SESSIONS_EVICTED
from nessa.services.storage.sessions import SessionStore, check_session_name


def test_state_survives_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    with store.open("run-1", "ds", "craig") as st:
        assert st.rounds == 0 and st.parts == {}
        st.parts["all"] = {"learned": {"streak": [1, 2]}}
        st.rounds += 1
    again = SessionStore(tmp_path)
    with again.open("run-1", "ds", "craig") as st:
        assert st.rounds == 1 and st.parts["all"]["learned"]["streak"] == [1, 2]
    [(listed, size)] = again.list()
    assert (listed.session, listed.dataset, listed.method, listed.rounds) == ("run-1", "ds", "craig", 1)
    assert size > 0


def test_a_failed_call_saves_nothing(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    with pytest.raises(RuntimeError), store.open("run-1", "ds", "adacore") as st:
        st.rounds = 99
        raise RuntimeError("the selector failed")
    with store.open("run-1", "ds", "adacore") as st:
        assert st.rounds == 0


def test_least_recently_used_sessions_are_dropped_first_and_counted(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, max_sessions=2)
    before = SESSIONS_EVICTED._value.get()
    for name in ("a", "b", "c"):
        with store.open(name, "ds", "craig") as st:
            st.rounds += 1
    kept = {st.session for st, _ in store.list()}
    assert kept == {"b", "c"}
    assert SESSIONS_EVICTED._value.get() - before == 1
    with store.open("b", "ds", "craig"):  # b is now the most recent: d pushes c out
        pass
    with store.open("d", "ds", "craig"):
        pass
    assert {st.session for st, _ in store.list()} == {"b", "d"}


@pytest.mark.parametrize("bad", ["", "../x", "a b", "x" * 129, "-lead", "name\n"])
def test_session_names_are_checked(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="session"):
        check_session_name(bad)
    assert check_session_name("run-1.a:b@c") == "run-1.a:b@c"
