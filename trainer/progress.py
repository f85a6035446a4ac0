"""What a run prints: its lines, above a progress bar shown only on a terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Console"]


class Console:
    """Lines go to ``echo`` (or above the bar); the bar counts optimizer steps.

    Args:
        echo: where lines go without a bar.
        enabled: show a bar at all (``--no-progress`` turns it off; it is also off when stderr is no terminal).
        label: the bar's label.
    """

    def __init__(self, echo: Callable[[str], None], enabled: bool, label: str) -> None:
        self.echo = echo
        self.enabled = enabled
        self.label = label
        self._bar: Any = None

    def open(self, total_steps: int, done_steps: int) -> None:
        """Show the bar (when enabled)."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total_steps,
            initial=done_steps,
            desc=self.label,
            unit="step",
            leave=True,
            dynamic_ncols=True,
            disable=None,  # only on a terminal
        )

    def step(self) -> None:
        """One optimizer step done."""
        if self._bar is not None:
            self._bar.update(1)

    def epoch(self, accuracy: float, loss: float) -> None:
        """Show the last epoch's figures on the bar."""
        if self._bar is not None:
            self._bar.set_postfix(acc=f"{accuracy * 100:.2f}%", loss=f"{loss:.3f}")

    def say(self, text: str) -> None:
        """Print a line (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            self.echo(text)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
