"""Errors that the command line reports as one line, without a traceback."""


class RealfaceError(Exception):
    """A problem the user can fix (bad input, bad option, missing file); shown as one line."""


class InputError(RealfaceError):
    """One input file could not be read or holds nothing usable."""
