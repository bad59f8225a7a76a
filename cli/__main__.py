"""`python -m expertmesh.cli`: the `expertmesh` command without its console script."""

from expertmesh.cli import main

main()
