"""The embedded backend: the packaged SmolLM2-135M-Instruct behind an OpenAI-compatible server,
so that the default configuration runs on a CPU-only machine with nothing else to start."""
