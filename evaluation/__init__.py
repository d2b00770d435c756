"""``nnunet_mulmod.evaluation`` (the repository's evaluation/ folder): evaluation per case, class and modality;
reports; paired model comparison (docs/evaluation.md).

- ``metrics``: Dice, IoU, RVD, HD95, ASSD for one case (numpy/scipy only).
- ``evaluate_folder.evaluate_folder``: a prediction folder -> nnU-Net-compatible summary.json with a
  per-modality section (CLI ``nnunet_mulmod_evaluate``).
- ``report.write_report``: a results folder of summary.json files -> Markdown/CSV/LaTeX tables
  (``tables``) and PNG figures (``figures``, also the demo's) (CLI ``nnunet_mulmod_report``).
- ``experiments``: the papers' comparisons as one resumable command (``nnunet_mulmod_experiment``); its
  rows in ``experiment_settings``, state file in ``experiment_state``, paths and test cases in ``experiment_paths``,
  parameter counts in ``parameter_count``
- ``compare.compare_models``: paired per-case differences and Wilcoxon tests between models
  (CLI ``nnunet_mulmod_compare``).

Submodules are not imported here: worker processes import only what they need (metrics stays free of pandas,
matplotlib and torch).
"""
