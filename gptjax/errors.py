"""User-facing messages: the one exception type the CLI turns into a single clear error line and a non-zero exit,
and the one-line warnings and notes printed beside a run's output."""
import errno
import sys


class GptjaxError(Exception):
    """A user-facing error: the message says what went wrong, where, and what to do."""


class RunInterrupted(GptjaxError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved before stopping (exit code 130)."""


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG}


def storage_error(error: OSError) -> GptjaxError | None:
    """The one-line error for storage the machine refused (disk full, no permission, read-only, I/O error), naming
    the path; None for other OSErrors (bugs keep their traceback)."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    where = f"{error.filename}: " if error.filename else ""
    code = errno.errorcode.get(error.errno, "")
    return GptjaxError(f"{where}{error.strerror or error} ({code}); outputs are written whole or not at all and "
                       f"finished work is kept: free space or fix the permissions, then run the same command again")


def warn(message: str) -> None:
    """One `gptjax: warning: ...` line on stderr (something went wrong but the work goes on)."""
    print(f"gptjax: warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """One `gptjax: note: ...` line on stderr (a choice made on the user's behalf)."""
    print(f"gptjax: note: {message}", file=sys.stderr, flush=True)
