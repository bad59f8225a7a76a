"""The `expertmesh` command line. It sits above every other package: it serves the gateway,
trains and evaluates routers, starts experts and runs benchmark evaluations."""

from expertmesh.cli.main import app, main

__all__ = ["app", "main"]
