"""Which features of a trained MulModSeg encoder tell CT from MR? The study behind the modality classifier.

    python benchmarks/probe_modality_features.py -m MODEL_FOLDER [-f 0] [--patches 24]

For every case of the model's dataset (its fold's split), ``--patches`` random patches of the planned patch
size are cut from the preprocessed images (no augmentation) and passed through the trained encoder of
``checkpoint_final.pth``. Feature sets compared (spatial statistics of the encoder's outputs):
``bottleneck_mean`` (what the classifier read up to nnunet-mulmod 0.3), ``stage_means`` (mean of every
stage), ``stage_mean_std`` (mean and std of every stage: what it reads now), ``early_mean_std`` (the first
three stages). For each, a standardised linear classifier is fitted on the fold's training cases and
scored on its validation cases (patch accuracy, case accuracy by majority), and leave-one-case-out over
all cases. Measured 2026-12-03 on the real CT/MR dev set's fold-0 model of benchmarks/bench_real_data.py
(2-core CPU VM): see the README, "Does it help?".
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F


def feature_sets(skips):
    def mean_std(stages):
        return torch.cat([torch.cat([s.flatten(2).mean(2), s.flatten(2).std(2)], 1) for s in stages], 1)
    return {"bottleneck_mean": skips[-1].flatten(2).mean(2),
            "stage_means": torch.cat([s.flatten(2).mean(2) for s in skips], 1),
            "stage_mean_std": mean_std(skips),
            "early_mean_std": mean_std(skips[:3])}


def encoder_features(model_folder: str, fold: int, patches: int, seed: int = 0):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(fold,),
                                                   checkpoint_name="checkpoint_final.pth")
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    network.eval()
    dataset_name = predictor.plans_manager.dataset_name
    preprocessed = os.path.join(nnUNet_preprocessed, dataset_name)
    case_modalities = predictor.dataset_json["case_modalities"]
    split = json.load(open(os.path.join(preprocessed, "splits_final.json")))[fold]
    configuration = predictor.configuration_manager
    folder = os.path.join(preprocessed, configuration.data_identifier)
    dataset = infer_dataset_class(folder)(folder, split["train"] + split["val"])
    patch = list(configuration.patch_size)
    rng = np.random.default_rng(seed)
    features = {}
    for key in split["train"] + split["val"]:
        data = np.asarray(dataset.load_case(key)[0])  # [C, Z, Y, X]
        crops = []
        for _ in range(patches):
            crop = np.zeros((data.shape[0], *patch), np.float32)
            if len(patch) == 2:  # a 2d configuration: one slice
                z = rng.integers(data.shape[1])
                source = data[:, z]
            else:
                source = data
            starts = [rng.integers(max(s - p, 0) + 1) for s, p in zip(source.shape[1:], patch)]
            region = source[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(starts, patch))]
            crop[(slice(None),) + tuple(slice(0, n) for n in region.shape[1:])] = region
            crops.append(crop)
        with torch.no_grad():
            features[key] = feature_sets(network.encoder(torch.from_numpy(np.stack(crops))))
    return features, case_modalities, split


def fit_linear(features, labels, steps=300):
    mean, std = features.mean(0), features.std(0) + 1e-6
    linear = torch.nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(linear.parameters(), 1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(linear((features - mean) / std), labels) + 1e-3 * linear.weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: linear((x - mean) / std).argmax(1)


def score(features, case_modalities, train, test, name):
    names = sorted(set(case_modalities.values()))
    x = torch.cat([features[k][name] for k in train])
    y = torch.cat([torch.full((len(features[k][name]),), names.index(case_modalities[k])) for k in train])
    predict = fit_linear(x, y)
    return {k: (predict(features[k][name]) == names.index(case_modalities[k])).float().mean().item() for k in test}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", required=True, help="trained MulModSeg model folder")
    parser.add_argument("-f", type=int, default=0, help="fold")
    parser.add_argument("--patches", type=int, default=24, help="patches per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    features, case_modalities, split = encoder_features(args.m, args.f, args.patches)
    cases = split["train"] + split["val"]
    print("| features | val patch accuracy (min case) | val cases right | leave-one-case-out patch accuracy (min) "
          "| LOO cases right |\n|---|---|---|---|---|")
    for name in feature_sets([torch.zeros(1, 1, 2, 2)] * 3):
        val = score(features, case_modalities, split["train"], split["val"], name)
        loo = {}
        for k in cases:
            loo.update(score(features, case_modalities, [c for c in cases if c != k], [k], name))
        print(f"| {name} | {np.mean(list(val.values())):.3f} ({min(val.values()):.2f}) | "
              f"{sum(v > 0.5 for v in val.values())}/{len(val)} | {np.mean(list(loo.values())):.3f} "
              f"({min(loo.values()):.2f}) | {sum(v > 0.5 for v in loo.values())}/{len(loo)} |", flush=True)


if __name__ == "__main__":
    main()
