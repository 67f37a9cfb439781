"""What the gateway counts and logs: the Prometheus metrics (metrics.py), the live ring the console
reads (live.py), the request log line (http.py) and its formats (logs.py). They import no service:
observing.py attaches them to a started gateway, its application and its ASGI entry.
"""
