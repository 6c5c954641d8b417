"""The one exception type a command turns into a one-line message and a non-zero exit."""


class CommandError(Exception):
    """A failure the user can act on; str() is one line that says what is wrong and what to do."""
