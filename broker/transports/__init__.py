"""Transports: what drives the flows from outside. Each turns its protocol's input into the
pipeline's values and its outcomes back into the protocol's answers (an acknowledgement, an HTTP
status), and nothing else.

- ``amqp_ingest.py``: partners' events from the RabbitMQ ingest queue (acknowledged when settled)
- ``amqp_dead_letters.py``: the dead-letter queue, into the dead-letter flow
- ``http_app.py``: the aiohttp application: partner ingest (embedded), health, readiness
- ``http_access.py``: analysts' feeds and the IG lead's audit API (authenticated, audited)
- ``openapi.py``: the OpenAPI document of every route
"""
