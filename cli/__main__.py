"""`python -m expertmesh.cli`: the `expertmesh` command without its console script."""

from expertmesh.cli import main

if __name__ == "__main__":
    main()
