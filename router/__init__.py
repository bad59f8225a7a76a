"""The router: decides which domain (and so which expert) a chat request belongs to."""
