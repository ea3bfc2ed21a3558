"""Progress of a training run that tells the truth about when it will end.

With early stopping a run ends at ``best_epoch + patience`` at the latest unless validation improves again, so the bar
counts to that epoch (capped by the epoch maximum) and moves its end as the best epoch moves; the estimate of the time
left is the time to that epoch. On a terminal it is a tqdm bar on stderr; elsewhere (a log file, a pipe) it is a plain
line every few seconds and one at the end, never ``\\r`` updates.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "is_terminal"]


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Epoch progress of one run: ``epoch(...)`` after each epoch, ``batch(...)`` within one, ``close()`` at the end."""

    def __init__(self, epochs: int, patience: int | None, initial: int = 0, desc: str = "training",
                 stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.epochs, self.patience, self.desc = epochs, patience, desc
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.last_line, self.pending = interval, 0.0, ""
        self.started, self.first_epoch = time.perf_counter(), initial
        self.bar: Any = None
        if is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, initial=initial, unit="epoch", dynamic_ncols=True, desc=desc,
                            file=self.stream)

    def _end(self, epoch: int, best_epoch: int | None, validated: bool) -> int:
        """The epoch the run ends at unless validation improves: patience-aware, capped by the maximum."""
        if self.patience is None or not validated or best_epoch is None:
            return self.epochs
        return max(epoch, min(self.epochs, best_epoch + self.patience))

    def epoch(self, epoch: int, train_llh: float, best_valid: float | None, best_epoch: int | None) -> None:
        end = self._end(epoch, best_epoch, best_valid is not None)
        best = "" if best_valid is None else f", best valid {best_valid:.4f} (epoch {best_epoch})"
        text = f"train {train_llh:.4f}{best}"
        if self.bar is not None:
            if self.bar.total != end:
                self.bar.total = end
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(max(0, epoch - self.bar.n))
            return
        self.pending = (f"{self.desc}: epoch {epoch}/{end}"
                        + (f" (ends there unless validation improves; at most {self.epochs})" if end < self.epochs
                           else "")
                        + f", {text}, {time.perf_counter() - self.started:.1f} s")
        now = time.perf_counter()
        if epoch == self.first_epoch + 1 or now - self.last_line >= self.interval:
            self._line()

    def batch(self, epoch: int, batch_llh: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch} batch llh {batch_llh:.4f}", refresh=False)
            self.bar.update(0)

    def _line(self) -> None:
        if self.pending:
            print(self.pending, file=self.stream, flush=True)
            self.pending, self.last_line = "", time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()
