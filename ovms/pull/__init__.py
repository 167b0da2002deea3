"""Pull mode: verified, resumable downloads of Hugging Face repositories (``ovms --pull``).

Independent of the serving stack: nothing here imports ``ovms.server``, the transports, the registry, grpc or
aiohttp (tests/pull/test_boundaries.py checks it). Modules, in the order a pull uses them:

- ``cli``: the flags, ``wants_pull`` and ``run`` for the core's command line; exit codes 0 / 64 / 1
- ``settings``: environment knobs (HF_ENDPOINT, HF_TOKEN, https_proxy, GIT_LFS_RESUME_*, OVMS_PULL_*)
- ``paths``: where the model, its ``.lfswip`` marker, ``.lfs_part`` files and the record live; name safety
- ``hub``: the Hub HTTP API (revision -> commit, recursive tree with pagination, error taxonomy)
- ``pull``: one pull end to end; ``transfer``: the pycurl CurlMulti engine; ``responses``: what a response
  means; ``state``: sidecars, marker lock, completion record; ``verify``: size + sha256 / git blob sha1
- ``graph``, ``tasks``, ``gguf``, ``convert``, ``config_edit``: OVMS's graph.pbtxt, task inference, GGUF
  parts, optimum-cli conversion, --list_models / --add_to_config / --remove_from_config
- ``progress``: tqdm on a terminal, periodic log lines otherwise
"""
