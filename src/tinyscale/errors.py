"""The one exception type that means "the user gave us something wrong".

Library code raises `UserError` with a one-line message naming the file or option and the problem;
the CLI prints it as `tinyscale: error: ...` and exits with code 2, never with a traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, an invalid option, a corrupt shard. Exit code 2 at the CLI."""
