"""Transports: the only place that imports grpc and aiohttp. Decode -> call the data plane -> encode."""
