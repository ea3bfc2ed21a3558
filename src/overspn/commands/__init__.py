"""Subcommands of the ``overspn`` command line, one module each."""
