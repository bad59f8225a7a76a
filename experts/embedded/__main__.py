"""`python -m expertmesh.experts.embedded`: run the embedded expert server (what `expertmesh serve` starts)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from expertmesh import paths
from expertmesh.experts.embedded.model import SERVED_MODEL_NAME


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m expertmesh.experts.embedded", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $EXPERTMESH_HOME/models")
    parser.add_argument("--served-model-name", action="append", dest="names")
    parser.add_argument("--max-tokens-limit", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import uvicorn

    from expertmesh.experts.embedded.model import EmbeddedChatModel, prepare_model
    from expertmesh.experts.embedded.server import EmbeddedServer, build_embedded_app

    model = EmbeddedChatModel(prepare_model((args.cache_dir or paths.model_cache()).expanduser()))
    server = EmbeddedServer(model, args.names or [SERVED_MODEL_NAME], args.max_tokens_limit)
    uvicorn.run(build_embedded_app(server), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
