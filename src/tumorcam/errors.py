"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class TumorcamError(Exception):
    """Bad input or a failed step, with a message that names the file or option at fault."""
