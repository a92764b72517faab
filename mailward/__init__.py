"""Mailward's command line: the composition root that starts each process."""

__version__ = "0.1.0"
