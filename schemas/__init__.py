"""The wire contract shared by partners' adapters and the broker.

Importing nothing from ``broker`` or ``adapters``: a partner can vendor this package (or build
against the exported JSON Schema files beside it) without the service.
"""
