"""Stopping work when a client cancels: a token the long-running parts check between units of work.

The servicer builds one :class:`CancelToken` per call from the gRPC context (the call is inactive once the client
cancels, its deadline passes or the server stops); domain code only sees :meth:`CancelToken.check`, so it does not
depend on gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["CancelToken", "Cancelled"]


class Cancelled(Exception):
    """The call was cancelled (by its client, its deadline, or a server shutdown); its work was stopped."""


class CancelToken:
    """A flag that turns on when a call ends early.

    Args:
        is_active: returns False once the call is over (``grpc.ServicerContext.is_active``); ``None`` for work
            that nobody can cancel except through :meth:`cancel`.
    """

    def __init__(self, is_active: Callable[[], bool] | None = None) -> None:
        self._is_active = is_active
        self._event = threading.Event()

    def cancel(self) -> None:
        """Mark the work as cancelled."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once the call is over or :meth:`cancel` was called."""
        if self._event.is_set():
            return True
        if self._is_active is not None and not self._is_active():
            self._event.set()
            return True
        return False

    def check(self) -> None:
        """Raise :class:`Cancelled` if the call is over."""
        if self.cancelled:
            raise Cancelled("the call was cancelled or its deadline passed; its work was stopped")
