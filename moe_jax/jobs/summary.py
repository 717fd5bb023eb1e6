"""What every job returns: its headline metric, how long it ran, and the rest."""

from __future__ import annotations

import dataclasses
import json
import os

SUMMARY_FILE = "summary.json"


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
    # The whole process that finished the run: data, compilation, training, evaluation
    # (python -m moe_jax.main sets it; a resumed run counts its last attempt).
    wall_seconds: float | None = None
    # CPU time of that process (all its threads): on a shared machine, where wall time
    # depends on the others' load, the cost of the run itself.
    cpu_seconds: float | None = None

    def headline(self) -> str:
        """e.g. `held-out exact match: 89.3% on 1000 arithmetic problems after 1800 steps
        (503s of training)`."""
        value = "n/a" if self.value is None else f"{self.value:.1%}"
        on = f" on {self.examples} {self.unit}" if self.examples is not None else ""
        return (f"{self.metric}: {value}{on} after {self.steps} steps "
                f"({self.seconds:.0f}s of training)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, workdir: str, name: str = SUMMARY_FILE) -> str:
        """Written whole and renamed into place: a reader never sees half a summary."""
        path = os.path.join(workdir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(self.as_dict(), f, indent=2)
        os.replace(path + ".tmp", path)
        return path

    @classmethod
    def from_dict(cls, record: dict) -> "Summary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def read_summary(workdir: str, name: str = SUMMARY_FILE) -> Summary | None:
    """The Summary a finished run left in `workdir`; None when there is none (a run not
    finished, or a file that is not a job's Summary)."""
    try:
        with open(os.path.join(workdir, name)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not {"job", "metric", "value", "steps"} <= set(record):
        return None
    return Summary.from_dict(record)
