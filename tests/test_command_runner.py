"""The one command runner (nnunet_mulmod/command_runner.py) of the demo, the experiments and the benchmarks."""
import os
import sys

import pytest

from nnunet_mulmod.command_runner import CommandFailed, find_command, format_command, print_epoch_lines, run_logged


def test_runs_with_env_changes_logs_and_sees_every_line(tmp_path):
    log = str(tmp_path / "logs" / "step.log")
    seen = []
    script = "import os; print('Epoch 0'); print('value', os.environ['NNUNET_MULMOD_TEST_VALUE'])"
    run_logged([sys.executable, "-c", script], log, {"NNUNET_MULMOD_TEST_VALUE": "a b"}, on_line=seen.append)
    assert seen == ["Epoch 0\n", "value a b\n"]
    text = open(log, encoding="utf-8").read()
    assert "$ NNUNET_MULMOD_TEST_VALUE='a b' " in text and text.endswith("Epoch 0\nvalue a b\n")
    run_logged([sys.executable, "-c", "print('second')"], log)  # appends by default
    assert open(log, encoding="utf-8").read().startswith(text) and "second" in open(log, encoding="utf-8").read()
    run_logged([sys.executable, "-c", "print('fresh')"], log, append=False)
    assert "Epoch 0" not in open(log, encoding="utf-8").read()


def test_failure_names_command_exit_code_and_log_tail(tmp_path):
    log = str(tmp_path / "step.log")
    with pytest.raises(CommandFailed) as info:
        run_logged([sys.executable, "-c", "print('working'); raise SystemExit(4)"], log, {"X": "1"})
    assert info.value.returncode == 4 and info.value.log_file == log and "working" in info.value.tail
    assert str(info.value).startswith("X=1 ") and "failed with exit code 4" in str(info.value)
    with pytest.raises(CommandFailed) as info:
        run_logged(["no_such_command_nnunet_mulmod"], log, environ={"PATH": os.environ.get("PATH", "")})
    assert info.value.returncode == 127 and "installed" in info.value.tail


def test_console_scripts_and_shell_lines(capsys):
    assert find_command("python") in (os.path.join(os.path.dirname(sys.executable), "python"),
                                      __import__("shutil").which("python"))
    assert find_command("no_such_command_nnunet_mulmod") == "no_such_command_nnunet_mulmod"
    assert format_command(["a", "b c"], {"K": "v w"}) == "K='v w' a 'b c'"
    print_epoch_lines("Epoch 3\n")
    print_epoch_lines("train_loss 0.5\n")
    assert capsys.readouterr().out == "      Epoch 3\n"
