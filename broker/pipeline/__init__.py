"""The broker's flows: each the one sequencer of its audited work, as numbered steps.

- ``ingest.py``: a partner's message, from bytes to released records (:class:`Pipeline`)
- ``batcher.py``: gathers messages from any transport into pipeline batches
- ``dead_letters.py``: a message the broker failed on repeatedly
- ``access.py``: a read of the API, or a refusal
- ``retention.py``: records past their retention period
- ``checkpoints.py``: signing the head of the audit chain
"""

from broker.pipeline.ingest import DecideFn, Pipeline, PipelineStats

__all__ = ["DecideFn", "Pipeline", "PipelineStats"]
