"""The one exception type the CLI turns into a single clear error line and a non-zero exit."""


class GptjaxError(Exception):
    """A user-facing error: the message says what went wrong, where, and what to do."""


class RunInterrupted(GptjaxError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before stopping (exit code 130)."""
