"""The exception types of mmsearch. Every error names the input and what is wrong."""


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""


class ImageError(MMSearchError, ValueError):
    """An image could not be loaded: missing, corrupt, not an image, or too large."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"image {source}: {reason}")


class InputError(MMSearchError, ValueError):
    """An input to encode/index is malformed (wrong type, empty, missing field)."""


class ModelLoadError(MMSearchError, OSError):
    """A model could not be loaded: unknown backbone, missing path, offline hub id."""


class UnknownTaskError(MMSearchError, KeyError):
    """A task name is not in the task library."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class IndexFormatError(MMSearchError, ValueError):
    """An index directory is missing, malformed, of an unknown format version, or corrupt."""


class IndexMismatchError(MMSearchError, ValueError):
    """An index is used with a model (or settings) other than the ones it was built with."""


class StoreError(MMSearchError, OSError):
    """The LMDB store of an index could not be opened, grown, or holds a malformed entry."""


class UsageError(InputError):
    """A command-line value is wrong: the CLI prints the subcommand's usage and the message, and exits 2."""
