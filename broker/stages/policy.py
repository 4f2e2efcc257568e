"""Stage 6: the policy decision (pure).  The engine lives in ``broker.policy``; this re-export
keeps the stage list in one folder, in pipeline order."""

from __future__ import annotations

from broker.policy.engine import decide

__all__ = ["decide"]
