"""`train(monitor=..., stop_on=...)`: what the engine does with a monitor's alerts (the real
early rules are exercised through `moh train` in tests/test_train_live.py)."""

from moh.train import train
from tests.moh.records import Records


class Scripted:
    """Alerts at given steps; remembers what it was shown."""

    def __init__(self, at: dict[int, list], fail: bool = False):
        self.at, self.fail, self.seen = at, fail, []

    def write(self, record):
        self.seen.append(record["event"])

    def close(self):
        pass

    def check(self, step):
        if self.fail:
            raise RuntimeError("boom")
        return self.at.get(step, [])


def _alerts(sink):
    return [(a["step"], a["level"], a["code"]) for a in sink.records if a["event"] == "alert"]


def test_alerts_are_written_and_stop_on_ends_the_run(tiny_cfg):
    cfg = tiny_cfg(instruct_epochs=0, eval_prompts=0, threads=1)
    sink, mon = Records(), Scripted({2: [("warning", "w", "first")], 4: [("error", "e", "second")]})
    res = train(cfg, None, sink=sink, monitor=mon, stop_on="error")
    assert _alerts(sink) == [(2, "warning", "w"), (4, "error", "e")]
    assert res.status == "failed" and res.steps == 4 and "e at step 4: second" in res.message
    assert sink.records[-1]["event"] == "run_end" and sink.records[-1]["status"] == "failed"
    assert mon.seen[0] == "run_start" and "alert" in mon.seen  # it sees every record, its own alerts too
    sink = Records()
    res = train(cfg, None, sink=sink, monitor=Scripted({2: [("warning", "w", "first")]}), stop_on="warning")
    assert res.status == "failed" and res.steps == 2
    sink = Records()
    res = train(cfg, None, sink=sink, monitor=Scripted({2: [("warning", "w", "first")]}), stop_on="error")
    assert res.status == "completed"  # a warning is below --stop-on error


def test_a_failing_monitor_does_not_end_the_training(tiny_cfg):
    cfg = tiny_cfg(instruct_epochs=0, eval_prompts=0, threads=1)
    sink = Records()
    res = train(cfg, None, sink=sink, monitor=Scripted({}, fail=True))
    assert res.status == "completed"
    assert _alerts(sink) == [(1, "warning", "alerts_off")]  # once, then the checks are off
    assert "RuntimeError: boom" in next(a for a in sink.records if a["event"] == "alert")["message"]
