"""Typed errors. Library code raises these; only the CLI turns them into one-line messages.

Every message should name the file or setting at fault and the problem, e.g.
``"data/x.tar.gz: archive member '../evil' would land outside the target"``.
"""


class FaceAttrError(Exception):
    """A problem the user can fix (bad input, missing file, bad setting). Exit code 2."""

    exit_code = 2


class DataError(FaceAttrError):
    """The dataset or an archive cannot be used as given."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the target folder, or is a link or device."""


class ModelError(FaceAttrError):
    """A saved model is missing, incomplete or of an unknown kind."""


class InputError(FaceAttrError):
    """An input image, video or camera cannot be read."""


class ConfigError(FaceAttrError):
    """A configuration value is invalid."""


class WriteError(FaceAttrError):
    """A file or folder cannot be written (no space, read-only, no permission, in use by another
    command); the message names the path and what to change."""
