"""Running the package's and nnU-Net's command-line entry points from the end-to-end tests, as a user does."""
import subprocess


def run(cmd, env, expect_ok=True):
    """cmd (list) with env -> (exit status, stdout + stderr); raises with the output's tail when expect_ok and it failed."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    output = proc.stdout + proc.stderr
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-5000:]}")
    return proc.returncode, output
