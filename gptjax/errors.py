"""User-facing messages: the one exception type the CLI turns into a single clear error line and a non-zero exit,
and the one-line warnings and notes printed beside a run's output."""
import sys


class GptjaxError(Exception):
    """A user-facing error: the message says what went wrong, where, and what to do."""


class RunInterrupted(GptjaxError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before stopping (exit code 130)."""


def warn(message: str) -> None:
    """One `gptjax: warning: ...` line on stderr (something went wrong but the work goes on)."""
    print(f"gptjax: warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """One `gptjax: note: ...` line on stderr (a choice made on the user's behalf)."""
    print(f"gptjax: note: {message}", file=sys.stderr, flush=True)
