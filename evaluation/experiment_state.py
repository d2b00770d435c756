"""The state file of a ``nnunet_mulmod_experiment`` (``<OUT>/experiment_state.json``): which steps are done."""
from __future__ import annotations

import datetime
import json
import os

STATE_FILE = "experiment_state.json"


class ExperimentError(RuntimeError):
    """A problem the user can fix; the CLI prints the message without a traceback."""


class ExperimentState:
    """``experiment_state.json``: {"experiment", "dataset", "configuration", "steps": {key: record}}.

    A step is recorded as started before it runs and as done (with what it produced) after: a step found
    started-but-not-done was interrupted and is redone from scratch.
    """

    def __init__(self, folder: str, header: dict):
        self.path = os.path.join(folder, STATE_FILE)
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
            for key in ("experiment", "dataset", "configuration", "plans"):
                if self.data.get(key) != header[key]:
                    raise ExperimentError(
                        f"{folder} holds experiment {self.data.get('experiment')} of {self.data.get('dataset')} "
                        f"({self.data.get('configuration')}, {self.data.get('plans')}); this run is "
                        f"{header['experiment']} of {header['dataset']} ({header['configuration']}, "
                        f"{header['plans']}). Give another output folder with -o.")
        else:
            self.data = dict(header, steps={})

    def step(self, key: str) -> dict:
        return self.data["steps"].get(key, {})

    def is_done(self, key: str) -> bool:
        return self.step(key).get("status") == "done"

    def mark(self, key: str, status: str, **info) -> None:
        self.data["steps"][key] = dict(info, status=status, time=datetime.datetime.now().isoformat(timespec="seconds"))
        self.save()

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2)
        os.replace(tmp, self.path)  # an interruption never leaves half a state file
