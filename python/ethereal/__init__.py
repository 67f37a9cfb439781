"""ethereal: a self-hosted API gateway for Claude."""

__version__ = "0.1.0"
