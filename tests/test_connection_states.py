"""The connection's state tables (edge.http.connection), and the Date cache: pure."""

from __future__ import annotations

import itertools

import pytest

from edge.core.httpdate import format_http_date
from edge.http.connection import (
    READ_MOVES,
    READER_ON,
    WRITE_MOVES,
    Read,
    StateError,
    Write,
    move,
)
from edge.http.response import SERVER_LINE, DateCache


@pytest.mark.parametrize(
    ("table", "states"), [(READ_MOVES, list(Read)), (WRITE_MOVES, list(Write))]
)
def test_every_state_has_a_row_and_every_move_in_it_is_allowed(table, states) -> None:
    assert set(table) == set(states)
    for now, allowed in table.items():
        assert move(table, now, now) is now  # staying put
        for new in allowed:
            assert move(table, now, new) is new


@pytest.mark.parametrize(
    ("table", "states"), [(READ_MOVES, list(Read)), (WRITE_MOVES, list(Write))]
)
def test_every_move_not_in_the_table_raises(table, states) -> None:
    forbidden = [
        (a, b) for a, b in itertools.product(states, states) if a is not b and b not in table[a]
    ]
    assert forbidden
    for now, new in forbidden:
        with pytest.raises(StateError, match=f"from {now.name} to {new.name}"):
            move(table, now, new)


def test_the_rules_the_tables_keep() -> None:
    # every state can close, and nothing leaves CLOSED
    for table, closed in ((READ_MOVES, Read.CLOSED), (WRITE_MOVES, Write.CLOSED)):
        assert all(closed in allowed for now, allowed in table.items() if now is not closed)
        assert not table[closed]
    # a connection lingers only after its last response was chosen, never back
    assert [s for s, allowed in READ_MOVES.items() if Read.LINGER in allowed] == [Read.LAST]
    assert READ_MOVES[Read.LINGER] == {Read.CLOSED}
    # after the peer's end of input, or once the last response is chosen, no more reading
    assert Read.READING not in READ_MOVES[Read.EOF] | READ_MOVES[Read.LAST]
    # our side shuts only from OPEN: never with bytes still waiting for the socket
    assert [s for s, allowed in WRITE_MOVES.items() if Write.SHUT in allowed] == [Write.OPEN]
    # waiting for the disk (a thread reading a file in) ends in sending again, or closing
    assert WRITE_MOVES[Write.DISK] == {Write.OPEN, Write.CLOSED}
    assert Read.PAUSED not in READER_ON and Read.EOF not in READER_ON


def test_date_cache_builds_a_line_per_second() -> None:
    dates = DateCache()
    line = dates.refresh(784111777.2)
    assert line == f"Date: {format_http_date(784111777)}\r\n".encode()
    assert line == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    assert dates.with_server == line + SERVER_LINE
    assert dates.refresh(784111777.9) is line  # the same second: the same bytes
    assert dates.refresh(784111778.0) == b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"
