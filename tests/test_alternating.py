"""ALT: strict round-robin over single-modality streams, cycling, and resumable position."""
import itertools
import os

from nnunet_mulmod.training.alternating import AlternatingModalityLoader


def _stream(name, n_cases):
    """An endless stream that cycles through n_cases case ids, like nnU-Net's random loaders never end."""
    cases = itertools.cycle([f"{name}_{i}" for i in range(n_cases)])
    return iter(lambda: {"keys": [next(cases)]}, None)


def test_round_robin_order_and_cycling_of_the_smaller_modality():
    loader = AlternatingModalityLoader([_stream("ct", 5), _stream("mr", 2)], [0, 1])
    batches = [next(loader) for _ in range(10)]
    assert [b["modality"] for b in batches] == [0, 1] * 5
    mr_cases = [b["keys"][0] for b in batches if b["modality"] == 1]
    assert mr_cases == ["mr_0", "mr_1", "mr_0", "mr_1", "mr_0"]  # the smaller modality is cycled
    assert all(b["keys"][0].startswith("ct") for b in batches if b["modality"] == 0)


def test_three_modalities_and_position_continues_after_resume():
    loader = AlternatingModalityLoader([_stream("ct", 3), _stream("t1", 3), _stream("t2", 3)], [0, 2, 1])
    assert [next(loader)["modality"] for _ in range(6)] == [0, 2, 1, 0, 2, 1]
    # a resumed run sets the position from epoch * iterations_per_epoch, e.g. epoch 3 of 250 iterations
    resumed = AlternatingModalityLoader([_stream("ct", 3), _stream("t1", 3), _stream("t2", 3)], [0, 2, 1])
    resumed.position = 3 * 250
    assert resumed.next_modality() == [0, 2, 1][(3 * 250) % 3]
    assert [next(resumed)["modality"] for _ in range(3)] == [[0, 2, 1][(750 + i) % 3] for i in range(3)]


def test_finish_stops_every_stream():
    class Stream:
        finished = False

        def __next__(self):
            return {"keys": ["x"]}

        def _finish(self):
            self.finished = True

    streams = [Stream(), Stream()]
    AlternatingModalityLoader(streams, [0, 1])._finish()
    assert all(s.finished for s in streams)


def test_streams_come_from_nnunets_own_setup_per_modality(monkeypatch):
    """per_modality_dataloaders calls the inherited get_dataloaders once per modality, with do_split restricted
    to that modality's cases and nnU-Net's augmentation workers shared out; one validation loader is kept."""
    from nnunet_mulmod.training.alternating import N_PROC_DA_ENV, per_modality_dataloaders

    class Loader:
        finished = False

        def __init__(self, keys):
            self.keys = keys

        def _finish(self):
            self.finished = True

    class Trainer:
        def do_split(self):
            return ["ct_0", "ct_1", "mr_0"], ["v_0"]

    trainer, calls = Trainer(), []

    def get_dataloaders():  # stands in for nnUNetTrainer.get_dataloaders, which calls self.do_split()
        tr, val = trainer.do_split()
        calls.append((tr, val, os.environ[N_PROC_DA_ENV]))
        return Loader(tr), Loader(val)

    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    monkeypatch.setenv(N_PROC_DA_ENV, "4")
    half = str(max(1, get_allowed_n_proc_DA() // 2))  # nnU-Net caps the variable by the CPU count
    streams, val = per_modality_dataloaders(get_dataloaders, trainer, [["ct_0", "ct_1"], ["mr_0"]], ["v_0"])
    assert calls == [(["ct_0", "ct_1"], ["v_0"], half), (["mr_0"], ["v_0"], half)]
    assert [s.keys for s in streams] == [["ct_0", "ct_1"], ["mr_0"]] and val.keys == ["v_0"] and not val.finished
    assert os.environ[N_PROC_DA_ENV] == "4" and trainer.do_split()[0] == ["ct_0", "ct_1", "mr_0"]  # restored
    monkeypatch.setenv(N_PROC_DA_ENV, "0")  # no workers stays no workers
    calls.clear()
    per_modality_dataloaders(get_dataloaders, trainer, [["ct_0"], ["mr_0"]], ["v_0"])
    assert [c[2] for c in calls] == ["0", "0"]


def test_case_proportional_alt_spreads_each_modality_by_its_share_of_cases():
    from nnunet_mulmod.training.alternating import weighted_pattern

    pattern = weighted_pattern([16, 9])  # the dev set's fold 0: 16 CT and 9 MR training cases
    assert len(pattern) == 25 and pattern.count(0) == 16 and pattern.count(1) == 9
    assert "111" not in "".join(map(str, pattern)) and "000" not in "".join(map(str, pattern))  # interleaved
    assert weighted_pattern([4, 4]) == [0, 1] and weighted_pattern([1, 1, 1]) == [0, 1, 2]  # equal = round-robin
    assert weighted_pattern([6, 3]) == weighted_pattern([2, 1])  # the period is reduced by the gcd

    loader = AlternatingModalityLoader([_stream("ct", 16), _stream("mr", 9)], [0, 1], weights=[16, 9])
    batches = [next(loader) for _ in range(100)]
    assert sum(b["modality"] == 0 for b in batches) == 64  # 64 % of the steps, as in mixed sampling
    assert all(b["keys"][0].startswith({0: "ct", 1: "mr"}[b["modality"]]) for b in batches)
    resumed = AlternatingModalityLoader([_stream("ct", 16), _stream("mr", 9)], [0, 1], weights=[16, 9], position=37)
    assert [next(resumed)["modality"] for _ in range(20)] == [b["modality"] for b in batches[37:57]]


def test_alt_weights_are_checked():
    import pytest

    from nnunet_mulmod.training.alternating import weighted_pattern

    for bad in ([], [3, 0], [2.5, 1]):
        with pytest.raises(ValueError, match="positive integers"):
            weighted_pattern(bad)
    with pytest.raises(ValueError, match="one ALT weight per stream"):
        AlternatingModalityLoader([_stream("ct", 1), _stream("mr", 1)], [0, 1], weights=[1])
