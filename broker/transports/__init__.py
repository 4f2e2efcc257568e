"""Transports: what drives the flows from outside. Each turns its protocol's input into the
pipeline's values and its outcomes back into the protocol's answers (an acknowledgement, an HTTP
status), and nothing else.

- ``amqp_ingest.py``: partners' events from the RabbitMQ ingest queue (acknowledged when settled)
- ``amqp_dead_letters.py``: the dead-letter queue, into the dead-letter flow
- ``http_app.py``: the aiohttp application: partner ingest (embedded), health, readiness
- ``http_access.py``: who may read (bearer tokens, roles), the shared query parameters, the agreements
- ``http_feeds.py``: the analysts' feeds (cursor pages, CSV, Server-Sent Events)
- ``http_audit.py``: the IG lead's audit API (query, export, trace, checkpoints, verify)
- ``openapi.py``: the OpenAPI document of every route
"""
