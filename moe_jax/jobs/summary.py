"""What every job returns: its headline metric, how long it ran, and the rest."""

from __future__ import annotations

import dataclasses
import json
import os


@dataclasses.dataclass
class Summary:
    """A job's result. `metric` names `value` in words a reader understands at a glance
    (e.g. "held-out exact match"); `details` holds everything else the job measured."""

    job: str
    metric: str
    value: float | None
    steps: int
    seconds: float
    examples: int | None = None  # how many held-out items `value` is measured on
    unit: str = "problems"  # what the examples are, e.g. "arithmetic problems"
    details: dict = dataclasses.field(default_factory=dict)

    def headline(self) -> str:
        """e.g. `held-out exact match: 89.3% on 1000 arithmetic problems after 1800 steps
        (503s of training)`."""
        value = "n/a" if self.value is None else f"{self.value:.1%}"
        on = f" on {self.examples} {self.unit}" if self.examples is not None else ""
        return (f"{self.metric}: {value}{on} after {self.steps} steps "
                f"({self.seconds:.0f}s of training)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, workdir: str, name: str = "summary.json") -> str:
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=2)
        return path
