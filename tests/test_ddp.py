"""The code paths nnU-Net's DDP (-num_gpus N) takes through our trainer, on two CPU processes with gloo.

Each rank builds nnUNetTrainerMulModSeg as nnUNetv2_train does, with nnU-Net's real ALT data loaders on a tiny
preprocessed dataset, and calls the hooks in nnU-Net's order:
on_train_start, per epoch on_train_epoch_start / train_step x N / on_train_epoch_end, on_validation_epoch_start /
validation_step / on_validation_epoch_end, save_checkpoint and load_checkpoint. Only what a CPU cannot do is
changed: nnU-Net hard-codes device cuda:rank under DDP and DDP(device_ids=[rank]), both replaced by the CPU.
The trainer runs uncompiled, as nnU-Net does on a CPU: with an eager dynamo backend nnU-Net's zero weight for the
lowest deep-supervision output leaves parameters without gradients, which DDP rejects (nnU-Net only works around
it when not compiling; inductor's compiled backward gives them zero gradients). The wrapping nnU-Net does on a
GPU, DDP(torch.compile(network)), is checked apart: unwrapping, and each rank keeping its own modality selection.
"""
import copy
import datetime
import os
import socket

import torch
import torch.multiprocessing as mp

WORLD = 2
ITERATIONS = 3  # odd: epoch 1 starts with the other modality, so lockstep across epochs is checked too


def _gather(obj):
    from torch import distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _worker(rank, root, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), nnUNet_n_proc_DA="0",
                      nnUNet_preprocessed=os.path.join(root, "pre"), nnUNet_results=os.path.join(root, "res"),
                      nnUNet_raw=os.path.join(root, "raw"))
    torch.set_num_threads(1)
    import faulthandler
    faulthandler.enable()  # a crash in a rank shows its Python stack instead of a bare SIGSEGV
    from torch import distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel

    from nnunet_mulmod.modeling.mulmodseg_net import MulModSegNet
    from nnunet_mulmod.text.table import TextEmbeddingTable
    from nnunet_mulmod.training.mulmodseg_trainer import TABLE_COPY_FILENAME, nnUNetTrainerMulModSeg
    from nnunet_mulmod.training.unwrap import unwrap_network
    from tiny_trainer import make_trainer

    nnunet_trainer_module.DDP = lambda module, device_ids=None: DistributedDataParallel(module)  # CPU: no device_ids
    saves = []
    original_save = TextEmbeddingTable.save
    TextEmbeddingTable.save = lambda self, path: (saves.append(path), original_save(self, path))[1]

    trainer = make_trainer(nnUNetTrainerMulModSeg)
    assert trainer.is_ddp and trainer.local_rank == rank
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # nnU-Net forces cuda:rank under DDP
    trainer.num_iterations_per_epoch = ITERATIONS
    trainer.on_train_start()
    core = trainer.mulmod_network()
    assert isinstance(trainer.network, DistributedDataParallel) and isinstance(core, MulModSegNet)
    assert unwrap_network(trainer.network) is core
    assert trainer.batch_size == 2  # nnU-Net splits the global batch of 4 over the ranks

    # the table copy: written once, by rank 0, for the whole run
    assert sum(len(s) for s in _gather(saves)) == 1 and os.path.isfile(trainer._table_copy_path())
    assert os.path.basename(trainer._table_copy_path()) == TABLE_COPY_FILENAME

    # DDP(torch.compile(net)), as nnU-Net wraps on a GPU: the selection is per rank (DDP must not broadcast rank 0's
    # selection buffers before the forward; they are on its ignore list under their "_orig_mod." names)
    # (on a copy: two DDP wrappers must not hook the same parameters)
    probe = copy.deepcopy(core)
    wrapped = DistributedDataParallel(torch.compile(probe, backend="eager"))
    assert unwrap_network(wrapped) is probe and unwrap_network(torch.compile(wrapped, backend="eager")) is probe
    batch = next(trainer.dataloader_val)
    with probe.using_modality(torch.tensor([rank, rank])):
        sum(o.float().sum() for o in wrapped(batch["data"])).backward()  # DDP wants every output used
    assert probe.last_modality_indices.tolist() == [rank, rank]

    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(ITERATIONS)]
        sequences = _gather([o["modality"] for o in outputs])
        assert sequences[0] == sequences[1] == [(epoch * ITERATIONS + i) % 2 for i in range(ITERATIONS)], sequences
        trainer.on_train_epoch_end(outputs)
        # the per-modality loss is the mean over every step of that modality on every rank, the same on each rank
        this_epoch = {0: [], 1: []}
        for per_rank in _gather(outputs):
            for o in per_rank:
                this_epoch[o["modality"]].append(float(o["loss"]))
        for m, name in enumerate(trainer.modalities):
            logged = trainer.logger.get_value(f"train_loss_{name}", step=-1)
            assert abs(logged - sum(this_epoch[m]) / len(this_epoch[m])) < 1e-6
            assert len(set(_gather(logged))) == 1
    # DDP kept the weights identical; the modality classifier was fitted on the same (gathered) evidence
    checksums = _gather([float(p.detach().double().sum()) for p in core.parameters()])
    assert checksums[0] == checksums[1]
    counts = _gather([trainer.modality_fitter.memory.count(m) for m in (0, 1)])
    assert counts[0] == counts[1] == [WORLD * 2 * 3, WORLD * 2 * 3]  # 2 ranks x batch 2 x 3 steps per modality

    trainer.on_validation_epoch_start()
    val_outputs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(2)]
    trainer.on_validation_epoch_end(val_outputs)
    gathered = _gather([(o["modality_correct"], o["modality_total"]) for o in val_outputs])
    correct = sum(c for per_rank in gathered for c, _ in per_rank)
    total = sum(t for per_rank in gathered for _, t in per_rank)
    assert total == WORLD * 2 * 2
    assert trainer.logger.get_value("val_modality_accuracy", step=-1) == correct / total

    # checkpoint: rank 0 writes the unwrapped network (no wrapper prefixes, no per-forward selection buffers)
    path = os.path.join(trainer.output_folder, "checkpoint_ddp.pth")
    trainer.save_checkpoint(path)
    dist.barrier()
    weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
    assert set(weights) == set(core.state_dict()) and "text_embeddings" in weights
    assert not any(k.startswith(("module.", "_orig_mod.")) or "modality_override" in k or "modality_selected" in k
                   or "auto_vote" in k for k in weights)
    before = {k: v.clone() for k, v in core.state_dict().items()}
    with torch.no_grad():
        for p in core.parameters():
            p.zero_()
    trainer.load_checkpoint(path)  # every rank loads it into DDP(OptimizedModule(MulModSegNet))
    assert all(torch.equal(before[k], v) for k, v in core.state_dict().items())
    # what nnUNetv2_predict does with it: rebuild from the results folder's plans, load the weights strictly
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from batchgenerators.utilities.file_and_folder_operations import load_json
    manager = PlansManager(load_json(os.path.join(trainer.output_folder_base, "plans.json")))
    rebuilt = nnUNetTrainerMulModSeg.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3, False)
    rebuilt.load_state_dict(weights)
    trainer.dataloader_train._finish()
    dist.destroy_process_group()


def test_ddp_two_cpu_ranks_alt_lockstep_gathered_logs_table_once_and_checkpoints(tmp_path):
    from tiny_trainer import write_tiny_preprocessed
    write_tiny_preprocessed(str(tmp_path / "pre"))
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(str(tmp_path), port), nprocs=WORLD, join=True)
