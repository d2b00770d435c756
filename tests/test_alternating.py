"""ALT: strict round-robin over single-modality streams, cycling, and resumable position."""
import itertools

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
