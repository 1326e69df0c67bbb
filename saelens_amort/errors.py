"""The one exception type for mistakes a user can fix (bad names, paths, sizes, corrupt caches).

The CLI prints these as a single line on stderr and exits non-zero; anything else is a bug and keeps its traceback.
"""


class SaeAmortError(Exception):
    """A user-fixable error. Its message is one line that says what went wrong and what to do instead."""
