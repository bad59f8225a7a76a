"""expertmesh: route each chat request to the domain expert model that should answer it."""

__version__ = "0.1.0"
