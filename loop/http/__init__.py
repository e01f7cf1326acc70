"""The HTTP front: the bounded server (server.py), the envelope and the one error type
(envelope.py), access rules (access.py), rate limits (ratelimit.py), the route table and its
handlers (api.py), and the Prometheus exposition (metrics.py).

No business logic here: a handler parses and checks a request, calls a component, and answers
with the envelope. Must not be here: decoding, disk layout, driver calls
(docs/architecture.md, "Packages").
"""
