"""Where latency comes from: measured on this machine, on a board through an agent, or emulated."""
