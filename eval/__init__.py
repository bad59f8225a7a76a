"""Measuring: routers on labelled data now; domain benchmark runs of the routed system later."""
