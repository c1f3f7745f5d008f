"""Orchestra: install machine-learning modules into dedicated environments and run them as tasks."""

__version__ = "0.1.0"
