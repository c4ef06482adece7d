"""`edge-search check`: the budgets.yaml schema, interval statistics, pass/warn/fail decisions, the
measurement rounds that feed them, and the reports (JUnit, markdown, benchmark JSON, text)."""
