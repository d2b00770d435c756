"""Trainers with another schedule, made from their name when nnU-Net's -tr search asks for it."""
import os
import pickle
import subprocess
import sys

import pytest

from nnunet_mulmod.training.schedules import parse_schedule_name, schedule_name, with_schedule


def test_schedule_names_round_trip():
    assert schedule_name("nnUNetTrainerMulModSeg", 40, 100, 10) == "nnUNetTrainerMulModSeg_40epochs_100it_10val"
    assert parse_schedule_name("nnUNetTrainerMulModSeg_40epochs_100it_10val") == ("nnUNetTrainerMulModSeg", 40, 100, 10)
    assert parse_schedule_name("nnUNetTrainerALT_5epochs") == ("nnUNetTrainerALT", 5, None, None)
    assert parse_schedule_name("nnUNetTrainerMulModSeg_demo_3epochs_2it") == ("nnUNetTrainerMulModSeg_demo", 3, 2, None)
    assert parse_schedule_name("nnUNetTrainerMulModSeg") is None
    assert parse_schedule_name("nnUNetTrainer_5epochs_x") is None


def test_nnunet_finds_made_trainers_and_they_pickle(tmp_path):
    """In a fresh interpreter (as nnUNetv2_train starts), through nnU-Net's own search."""
    script = """
import pickle
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
from nnunet_mulmod.training.mulmodseg_trainer import nnUNetTrainerMulModSeg
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
cls = find("nnUNetTrainerMulModSeg_3epochs_7it_2val")
assert cls.__mro__[1] is nnUNetTrainerMulModSeg, cls.__mro__
assert pickle.loads(pickle.dumps(cls)) is cls
assert find("nnUNetTrainerMulModSeg_3epochs_7it_2val") is cls
assert find("nnUNetTrainer_3epochs_7it").__mro__[1] is nnUNetTrainer
# trainers with a name of their own are the factory's classes too, found and pickled under that name
from nnunet_mulmod.zeus.trainer import nnUNetTrainerZeus, nnUNetTrainerZeusHybrid
debug = find("nnUNetTrainerZeus_debug")
assert debug.__mro__[1] is nnUNetTrainerZeus and pickle.loads(pickle.dumps(debug)) is debug
assert find("nnUNetTrainerZeusHybrid_debug").__mro__[1] is nnUNetTrainerZeusHybrid
demo = find("nnUNetTrainerMulModSeg_demo")
assert pickle.loads(pickle.dumps(demo)) is demo and demo.__mro__[1].__name__ == "nnUNetTrainerMulModSeg"
assert find("nnUNetTrainerMulModSeg_demo_5epochs").__mro__[1] is demo
try:
    find("nnUNetTrainerNoSuchThing_3epochs")
except RuntimeError:
    print("OK")
"""
    env = dict(os.environ)
    env.pop("NNUNET_MULMOD_NO_AUTOREGISTER", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-2000:] + out.stderr[-3000:]


def test_made_trainer_sets_the_schedule_and_saves_often_enough_to_resume():
    class Base:
        def __init__(self, plans, configuration, fold, dataset_json, device=None):
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
            self.save_every = 50

    Base.__name__ = Base.__qualname__ = "nnUNetTrainerFake"
    trainer = with_schedule(Base, 40, 100)(None, "2d", 0, {})
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (40, 100, 50)
    assert trainer.save_every == 4  # a tenth of the run, so that --c finds a checkpoint_latest.pth
    trainer = with_schedule(Base, 3, 10)(None, "2d", 0, {})
    assert (trainer.num_val_iterations_per_epoch, trainer.save_every) == (10, 1)
    trainer = with_schedule(Base, 1000)(None, "2d", 0, {})
    assert (trainer.num_iterations_per_epoch, trainer.save_every) == (250, 50)  # nnU-Net's own defaults kept
    assert with_schedule(Base, 40, 100) is with_schedule(Base, 40, 100)
    with pytest.raises(ValueError):
        with_schedule(Base, 0)


def test_named_schedule_keeps_its_name_and_module():
    class Base:
        def __init__(self, plans, configuration, fold, dataset_json, device=None):
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
            self.save_every = 50

        def do_split(self):
            return ["a"], ["b"]

    Base.__name__ = Base.__qualname__ = "nnUNetTrainerFakeNamed"
    cls = with_schedule(Base, 1, 2, 1, name="nnUNetTrainerFakeNamed_debug", module="some.module")
    assert (cls.__name__, cls.__qualname__, cls.__module__) == ("nnUNetTrainerFakeNamed_debug",) * 2 + ("some.module",)
    trainer = cls(None, "2d", 0, {})
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (1, 2, 1)
    # epochs None (an experiment's trainer that only changes its split): the base's schedule, extra methods
    split_only = with_schedule(Base, None, name="nnUNetTrainerFakeNamed_split", module="some.module",
                               namespace={"do_split": lambda self: (["x"], ["y"])})
    trainer = split_only(None, "2d", 0, {})
    assert (trainer.num_epochs, trainer.save_every, trainer.do_split()) == (1000, 50, (["x"], ["y"]))
    with pytest.raises(ValueError):
        with_schedule(Base, None)  # a schedule name needs epochs


def test_demo_trainer_name_follows_epochs():
    from nnunet_mulmod.demo.run_demo import DEFAULT_EPOCHS, DEFAULT_TRAINER, trained_trainer
    assert trained_trainer(DEFAULT_TRAINER, DEFAULT_EPOCHS) == "nnUNetTrainerMulModSeg_demo"
    assert trained_trainer(DEFAULT_TRAINER, 5) == "nnUNetTrainerMulModSeg_demo_5epochs"
    assert trained_trainer("nnUNetTrainerALT_5epochs", 7) == "nnUNetTrainerALT_5epochs"  # keeps its own schedule
