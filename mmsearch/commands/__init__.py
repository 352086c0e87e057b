"""Subcommands of the `mmsearch` CLI (the front-door layer, built on the library)."""
