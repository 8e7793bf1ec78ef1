"""An in-memory sink for tests that train in-process: every record `train()` writes, kept."""

from moh.telemetry import NullSink


class Records(NullSink):
    def __init__(self):
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    @property
    def steps(self) -> list[dict]:
        """The step records, in order."""
        return [r for r in self.records if r["event"] == "step"]
