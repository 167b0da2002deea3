"""The model download service: the Model Download microservice's REST API on the pull engine (``ovms.pull``).

Modules: ``schema`` (request/answer shapes: validation and OpenAPI from one definition), ``jobs`` (job record and
its SQLite store), ``service`` (requests -> jobs -> download threads; cancel, restart), ``hubs/`` (one plugin per
hub), ``plugins`` (which hubs exist), ``routes`` (aiohttp handlers under /api/v1), ``openapi``, ``__main__``.
It may import ``ovms.pull``; it never imports the serving stack (tests/download/test_layering.py).
"""
