"""RabbitMQ (aio-pika / aiormq): topology, confirmed publishing, the ingest and dead-letter consumers.

The one package that imports aio-pika and aiormq; their exceptions become ``BusUnavailable`` here
(``errors.py``).
"""
