"""twisted.web: /healthz, /metrics, and the adapters' webhooks."""
