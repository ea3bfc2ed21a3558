"""What a run of :func:`overspn.fit` did: one entry per epoch, the best epoch and why it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "ENTRY_KEYS"]

# Every entry has these keys. ``epoch`` 0 is the model before any update; entry ``e`` is measured after epoch ``e``.
# ``valid_llh`` / ``test_llh`` are None without that split; ``seconds`` / ``cpu_seconds`` are cumulative wall-clock
# and processor time of the run (resumed runs included); ``learning_rate`` is the rate (EM: step size) of the epoch.
ENTRY_KEYS = ("epoch", "train_llh", "valid_llh", "test_llh", "seconds", "cpu_seconds", "learning_rate")


@dataclass
class History:
    """Per-epoch log-likelihoods of a run; ``entries[0]`` evaluates the initial model.

    ``best_epoch`` / ``best_valid_llh``: the epoch with the best validation log-likelihood, whose parameters the model
    holds after :func:`overspn.fit` (without validation data: the last epoch, and None). ``stop_reason``: "epochs",
    "early stopping" or "time budget" ("" while running).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_llh: float | None = None
    stop_reason: str = ""

    @property
    def epochs(self) -> int:
        """Epochs done (the last entry's epoch; 0 before any update)."""
        return int(self.entries[-1]["epoch"]) if self.entries else 0

    @property
    def train_llh(self) -> list[float]:
        return [entry["train_llh"] for entry in self.entries]

    @property
    def valid_llh(self) -> list[float] | None:
        return self._column("valid_llh")

    @property
    def test_llh(self) -> list[float] | None:
        return self._column("test_llh")

    @property
    def seconds(self) -> float:
        return float(self.entries[-1]["seconds"]) if self.entries else 0.0

    @property
    def cpu_seconds(self) -> float:
        return float(self.entries[-1]["cpu_seconds"]) if self.entries else 0.0

    def _column(self, key: str) -> list[float] | None:
        if not self.entries or self.entries[0][key] is None:
            return None
        return [entry[key] for entry in self.entries]

    def append(self, entry: dict[str, Any]) -> None:
        missing = [key for key in ENTRY_KEYS if key not in entry]
        if missing:
            raise ValueError(f"a history entry needs the keys {ENTRY_KEYS}; missing {missing}")
        self.entries.append({key: entry[key] for key in ENTRY_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (JSON, and ``torch.load(weights_only=True)``)."""
        return {"entries": [dict(entry) for entry in self.entries], "best_epoch": self.best_epoch,
                "best_valid_llh": self.best_valid_llh, "stop_reason": self.stop_reason}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> History:
        history = cls(best_epoch=value.get("best_epoch"), best_valid_llh=value.get("best_valid_llh"),
                      stop_reason=str(value.get("stop_reason", "")))
        for entry in value["entries"]:
            history.append(entry)
        return history
