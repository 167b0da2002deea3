"""Protocol buffer modules generated at build time from ``protos/`` (see setup.py ``build_protos``)."""
