r"""Training logs: a CSV file always, TensorBoard when it is installed.

``DIR/log.csv`` has one row per logged step with the columns ``step``, each loss term,
``lr`` and ``time`` (seconds of training so far, summed over resumed runs). On resume the rows
after the checkpoint's step (written by a run that crashed before its next checkpoint) are
dropped, so the file matches the weights.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flowkit.io import atomic_write_text

__all__ = ["CSVLogger", "RunLogger", "TensorBoardLogger", "read_csv_log"]


def _fmt(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(float(value)) if isinstance(value, float) else str(value)


def read_csv_log(path: str | os.PathLike) -> list[dict[str, float]]:
    r"""Reads a ``log.csv`` into a list of rows (column -> float; ``step`` as int).

    Arguments:
        path: The CSV file, or the run folder holding ``log.csv``.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> log = CSVLogger(run / "log.csv"); log.log(1, {"loss": 0.5}, lr=1e-4, time=0.1); log.close()
        >>> read_csv_log(run)[-1]["loss"]
        0.5
    """

    path = Path(path)
    if path.is_dir():
        path = path / "log.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            rows.append({k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""})
        return rows


class CSVLogger:
    r"""Appends rows to a CSV file; the columns are fixed by the first row (or an existing header).

    Arguments:
        path: The CSV file.
        resume_step: When given, rows with ``step > resume_step`` are dropped from an existing
            file; when None, an existing file is replaced.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "log.csv"
        >>> log = CSVLogger(path); log.log(1, {"loss": 0.5}, lr=1e-4, time=0.1); log.close()
        >>> path.read_text().splitlines()[0]
        'step,loss,lr,time'
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                kept = [r for r in reader if r and int(r[0]) <= resume_step]
            if header:
                self.columns = header
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerow(header)
                w.writerows(kept)
                atomic_write_text(self.path, buf.getvalue())
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def log(self, step: int, terms: Mapping[str, float], lr: float, time: float) -> None:
        r"""Writes one row."""

        values = {"step": step, **{k: float(v) for k, v in terms.items()}, "lr": float(lr), "time": float(time)}
        if self.columns is None:
            self.columns = list(values)
            self._writer.writerow(self.columns)
        self._writer.writerow([_fmt(values[c]) if c in values else "" for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorBoardLogger:
    r"""Writes scalars with :class:`torch.utils.tensorboard.SummaryWriter` (imported lazily).

    Arguments:
        log_dir: The event-file folder.

    Raises:
        ImportError: The ``tensorboard`` package is missing (``pip install flowkit[logging]``).
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is an optional dependency
            raise ImportError("TensorBoard logging needs the 'tensorboard' package: pip install 'flowkit[logging]'") from e
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, terms: Mapping[str, float], lr: float, time: float) -> None:
        self.log_scalars(step, terms, "loss")
        self.writer.add_scalar("lr", float(lr), step)

    def log_scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
        r"""Writes ``prefix/name`` scalars (``loss/...`` for training terms, ``val/...`` for validation)."""
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class RunLogger:
    r"""The CSV log plus, when asked and installed, TensorBoard.

    Arguments:
        out: The run folder (``log.csv`` and ``tensorboard/`` go there).
        mode: ``"csv"``, ``"tensorboard"`` or ``"both"``; the CSV file is written in every mode.
        resume_step: The checkpoint step when resuming (later rows are dropped), else None.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> log = RunLogger(run, "csv"); log.log(1, {"loss": 0.5}, lr=1e-4, time=0.1); log.close()
        >>> [row["step"] for row in read_csv_log(run)]
        [1]
    """

    def __init__(self, out: str | os.PathLike, mode: str = "csv", resume_step: int | None = None) -> None:
        if mode not in ("csv", "tensorboard", "both"):
            raise ValueError(f"log must be 'csv', 'tensorboard' or 'both', got {mode!r}")
        self.out, self.resume_step = Path(out), resume_step
        self.validation: CSVLogger | None = None  # validation.csv, opened at the first validation
        self.loggers: list[Any] = [CSVLogger(Path(out) / "log.csv", resume_step)]
        if mode in ("tensorboard", "both"):
            try:
                self.loggers.append(
                    TensorBoardLogger(Path(out) / "tensorboard", purge_step=None if resume_step is None else resume_step + 1)
                )
            except ImportError as e:
                warnings.warn(f"{e}; logging to CSV only", stacklevel=2)

    def log(self, step: int, terms: Mapping[str, float], lr: float, time: float) -> None:
        for logger in self.loggers:
            logger.log(step, terms, lr, time)

    def log_validation(self, step: int, metrics: Mapping[str, float], lr: float, time: float) -> None:
        r"""Writes validation metrics: a row of ``validation.csv`` and ``val/...`` TensorBoard scalars."""
        if self.validation is None:
            self.validation = CSVLogger(self.out / "validation.csv", self.resume_step)
        self.validation.log(step, metrics, lr, time)
        for logger in self.loggers[1:]:
            logger.log_scalars(step, metrics, "val")

    def close(self) -> None:
        for logger in self.loggers + ([self.validation] if self.validation is not None else []):
            logger.close()


def format_terms(terms: Mapping[str, float], keys: Sequence[str] | None = None) -> dict[str, str]:
    r"""Short strings for a progress bar's postfix."""

    keys = list(terms) if keys is None else keys
    return {k: f"{terms[k]:.4g}" for k in keys if k in terms}
