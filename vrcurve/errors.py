"""The one exception type for input that is wrong."""


class VRCurveError(Exception):
    """The user's input is wrong: a path, a key, a parameter, a file.

    The message is one sentence that says what is wrong, where, and what to do. The command line prints it
    on one line and exits with status 1; library callers can catch it like any other exception.
    """
