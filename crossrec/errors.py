"""The exceptions crossrec raises for bad input; the CLI turns them into exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and how to fix it."""

    message: str
    file: str | None = None
    row: int | None = None  # 1-based data row, header not counted
    column: str | None = None
    fix: str | None = None
    line: int | None = None  # 1-based line in a text file, where that differs from the row

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        if self.column:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class CrossrecInputError(ValueError):
    """Base class for errors in what the user gave crossrec (data, config, flags)."""


class DataError(CrossrecInputError):
    """One or more problems found in input data. ``problems`` lists each of them."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        if not self.problems:
            raise ValueError("DataError needs at least one Problem")
        n = len(self.problems)
        head = "invalid input data" if n == 1 else f"invalid input data ({n} problems)"
        super().__init__(head + ":\n  " + "\n  ".join(str(p) for p in self.problems))


class ConfigError(CrossrecInputError):
    """A configuration file or value that crossrec cannot use."""


class TrainingDiverged(CrossrecInputError):
    """A fit whose loss or outputs became NaN or infinite: nothing from it is saved or published."""


def raise_if_diverged(history: dict, what: str) -> None:
    """Raises ``TrainingDiverged`` if any logged loss of a Keras ``fit`` history is not finite."""
    import math

    for key, values in history.items():
        if "loss" in key and any(not math.isfinite(v) for v in values):
            epoch = next(i for i, v in enumerate(values) if not math.isfinite(v)) + 1
            raise TrainingDiverged(
                f"{what}: training diverged ({key} became {values[epoch - 1]} in epoch {epoch}); nothing was saved. "
                "Check the data's weights and ratings for extreme values, or lower the learning rate")
