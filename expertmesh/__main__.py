from expertmesh.cli import main

main()
