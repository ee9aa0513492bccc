"""jibjib's stderr carries jibjib's messages, not TensorFlow's start-up chatter.

TensorFlow's C++ code writes to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
says (on some hosts `WARNING: All log messages before absl::InitializeLog() ...`
and the oneDNN notice), and that would break "one line per bad file". So while
a command runs, `native_output_captured` points fd 2 at a hidden file and
Python's sys.stderr at a copy of the original fd 2: jibjib's messages, Python
warnings and tracebacks still reach the user (or a Snakemake `2> log`). What
reached fd 2 is dropped afterwards, unless the environment variable
JIBJIB_TF_LOG names a file: it is then appended there as it is written, so it
survives a crash or a kill. After an unexpected exception (a bug) it is also
attached to the traceback, so nothing needed for a bug report is lost. A child
process that inherits fd 2 counts as native code; one started with
stderr=sys.stderr writes to the user.

Only the standard library is imported here: `jibjib features` pays for no more.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import sys
import tempfile
import time
from typing import IO, Iterator

LOG_VARIABLE = "JIBJIB_TF_LOG"


def quiet_python_logging() -> None:
    """TensorFlow's and absl's Python loggers to ERROR: their warnings are chatter to a jibjib user.

    The tensorflow logger can be set before TensorFlow loads; absl's is set
    when absl is loaded already (importing it here would cost the commands
    that never load TensorFlow 40 ms), so modules call this after their import.
    """
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        absl_logging.set_verbosity(absl_logging.ERROR)


def _writes_to_fd2(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: not fd 2
        return False


def _sink(label: str) -> tuple[IO[bytes], int, str | None]:
    """Where native output goes, the offset at which this command's starts, and a warning to show."""
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return tempfile.TemporaryFile(buffering=0), 0, None
    try:
        log = open(path, "ab+", buffering=0)
    except OSError as exc:
        return (tempfile.TemporaryFile(buffering=0), 0,
                f"{label}: warning: {LOG_VARIABLE}={path}: {exc.strerror}; TensorFlow's own output is dropped")
    # One file may collect many jobs: the header says which one wrote what follows.
    log.write(f"==> {label} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}) <==\n".encode())
    return log, log.tell(), None


def _read_from(sink: IO[bytes], start: int) -> str:
    try:
        size = os.fstat(sink.fileno()).st_size
        return os.pread(sink.fileno(), max(0, size - start), start).decode(errors="replace")
    except OSError:  # JIBJIB_TF_LOG is a terminal or a pipe: its text went there already
        return ""


@contextlib.contextmanager
def native_output_captured(label: str) -> Iterator[None]:
    """Run the block with fd 2 captured as described above; `label` ("jibjib predict") names it."""
    try:
        original = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to keep clean
        yield
        return
    python_stderr = sys.stderr
    if python_stderr is not None:
        python_stderr.flush()
    if _writes_to_fd2(python_stderr):
        # Never closed by us: a logging handler made during the command may keep writing to it.
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(original), "w"), encoding=python_stderr.encoding,
                                      errors=python_stderr.errors, line_buffering=True, write_through=True)
    # A native crash then shows the user the Python stack at least (TensorFlow's message needs JIBJIB_TF_LOG).
    own_faulthandler = sys.stderr is not python_stderr and not faulthandler.is_enabled()
    if own_faulthandler:
        faulthandler.enable(file=sys.stderr)
    sink, start, warning = _sink(label)
    os.dup2(sink.fileno(), 2)
    try:
        if warning:
            print(warning, file=sys.stderr)
        yield
    except Exception as exc:
        native = _read_from(sink, start).rstrip()
        if native:
            exc.add_note(f"Native output of {label} (TensorFlow's log):\n{native}")
        raise
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        sys.stderr = python_stderr
        if own_faulthandler:
            faulthandler.disable()
        sink.close()
