"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's head: a connection that has
not sent a whole request line and headers within ``HEAD_READ_SECONDS`` of opening (or of its
previous response) is closed. uvicorn bounds idle keep-alive connections and the head's size,
not the time a client may take to send it, so one that never ends its headers held a connection
open for as long as it liked."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_READ_SECONDS = 15.0


class HeadDeadlineH11(H11Protocol):
    _head_timer: asyncio.TimerHandle | None = None

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(HEAD_READ_SECONDS, self._head_deadline)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no request to answer: h11 has nothing to respond to

    def connection_made(self, transport):  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head arrived: the body has its own timeout
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
