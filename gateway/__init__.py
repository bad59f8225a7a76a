"""The gateway: an OpenAI-compatible HTTP API in front of the router and the experts."""
