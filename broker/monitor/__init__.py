"""Watching the broker from outside the message path: alerts and status (pure)."""
