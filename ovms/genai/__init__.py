"""The generative side: OpenAI / Cohere endpoints on openvino_genai servables.

- ``types``: neutral request and result types (sampling parameters, chunks, usage);
- ``protocol``: the endpoints' JSON, one module per family (chat, embeddings and rerank, tokenize, models, ...);
- ``dataplane``: the generative verbs (generate, embed, rerank, tokenize, list models) over the registry;
- ``parsers``: OVMS's tool and reasoning parsers; ``chat_template``, ``json_stream``, ``media``: what chat needs.

Nothing here imports openvino or a web framework: backends live in ``ovms/backends``, routes in ``ovms/transport``.
"""
