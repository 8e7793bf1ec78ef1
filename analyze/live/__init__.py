"""Live views of a run: following a log as it grows (`follow`), its state and early findings
(`state`, `early`), the dashboard of `moh watch` (`view`, `watch`), and the early-rule monitor
`moh train` runs while it trains (`early.EarlyAlerts`)."""
