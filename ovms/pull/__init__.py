"""Pull mode: verified, resumable downloads of Hugging Face repositories (``ovms --pull``).

Independent of the serving stack: nothing here imports ``ovms.server``, the transports, the registry, grpc or
aiohttp. The entry points for the ``ovms`` command line are in :mod:`ovms.pull.cli`.
"""
