"""Runs the console scripts of nnU-Net and of this package as subprocesses, each with its output in a log file.

The demo (``nnunet_mulmod_demo``), the experiments (``nnunet_mulmod_experiment``) and the benchmarks run their
steps as a user would type them; this is the one place that starts such a step, keeps its log and says what
failed. Only the standard library is imported: the callers are command-line front ends that start fast.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Mapping, Optional, Sequence

# Lines of the log that a failure message quotes.
TAIL_LINES = 25


class CommandFailed(RuntimeError):
    """A command exited non-zero (or could not be started: exit code 127). ``tail``: the last lines of its log."""

    def __init__(self, command: Sequence[str], env_changes: Mapping[str, str], log_file: str, returncode: int,
                 tail: str):
        self.command, self.env_changes, self.log_file = list(command), dict(env_changes), log_file
        self.returncode, self.tail = returncode, tail
        super().__init__(f"{format_command(command, env_changes)}\nfailed with exit code {returncode}. Last lines of "
                         f"{log_file}:\n{tail}")


def find_command(name: str) -> str:
    """The console script of this Python environment (also when its bin folder is not on PATH, e.g. when the
    caller was started as ``venv/bin/python -m ...``), else the one on PATH, else ``name`` as given."""
    beside_python = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(beside_python) and os.access(beside_python, os.X_OK):
        return beside_python
    return shutil.which(name) or name


def format_command(command: Sequence[str], env_changes: Optional[Mapping[str, str]] = None) -> str:
    """The command as a shell line, with the environment variables it is run with in front."""
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in (env_changes or {}).items())
    return (prefix + " " if prefix else "") + " ".join(shlex.quote(str(c)) for c in command)


def print_epoch_lines(line: str) -> None:
    """``on_line`` for ``nnUNetv2_train``: its ``Epoch N`` lines as progress on the console."""
    if line.startswith("Epoch "):
        print(f"      {line.strip()}", flush=True)


def run_logged(command: Sequence[str], log_file: str, env_changes: Optional[Mapping[str, str]] = None, *,
               environ: Optional[Mapping[str, str]] = None, on_line: Optional[Callable[[str], None]] = None,
               append: bool = True) -> None:
    """Runs ``command`` with stdout and stderr written to ``log_file`` (after a ``$ command`` line).

    The environment is ``environ`` (default this process's) with ``env_changes`` on top; the log line shows the
    changes. ``on_line(line)`` sees every output line (progress). ``append`` False starts a fresh log. Ctrl-C
    stops the child too. Raises :class:`CommandFailed` on a non-zero exit or when the executable is missing.
    """
    env_changes = dict(env_changes or {})
    env = dict(os.environ if environ is None else environ, **env_changes)
    resolved = [find_command(str(command[0]))] + [str(c) for c in command[1:]]
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    with open(log_file, "a" if append else "w", encoding="utf-8") as log:
        log.write(f"\n$ {format_command(command, env_changes)}\n" if append else
                  f"$ {format_command(command, env_changes)}\n")
        log.flush()
        try:
            process = subprocess.Popen(resolved, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       encoding="utf-8", errors="replace", bufsize=1)
        except FileNotFoundError as e:
            raise CommandFailed(command, env_changes, log_file, 127,
                                f"{e}: is nnunet-mulmod installed in this environment (the command comes with it "
                                f"or with nnunetv2)?") from e
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()  # the log is the place to look while a step runs
                if on_line is not None:
                    on_line(line)
            returncode = process.wait()
        except BaseException:  # Ctrl-C: stop the child too, then let the interruption through
            process.kill()
            process.wait()
            raise
    if returncode != 0:
        with open(log_file, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-TAIL_LINES:])
        raise CommandFailed(command, env_changes, log_file, returncode, tail)
