"""analyze: turn `run.jsonl` telemetry (or reference Rust trainer logs) into reports, findings and plots.

Never imports torch: the diagnostics must run where the engine cannot.
"""
