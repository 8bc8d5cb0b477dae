"""scripts/uvim_table.py on result files written here: rows, seeds, the paper's numbers."""

import json
import os

import numpy as np

from scripts import uvim_table


def write_run(root, name, **results):
  os.makedirs(os.path.join(root, name, "eval"))
  base = {"family": "uvim", "task": "depth", "dataset": "nyu_depth_v2",
          "eval_split": "validation", "num_eval_images": 654, "image_size": 512,
          "temperature": 1e-7, "context": True, "baseline": None, "codebook_size": 4096,
          "stage1_steps": 9200, "stage2_steps": 4600}
  with open(os.path.join(root, name, "results.json"), "w") as f:
    json.dump({**base, **results}, f)
  pictures = np.zeros((3, 8, 8, 3), np.float32)
  np.savez(os.path.join(root, name, "eval", "figure.npz"), input=pictures, truth=pictures,
           model=pictures + 0.5)


def test_rows_average_their_seeds_beside_table2(tmp_path, capsys):
  root = str(tmp_path / "sweep")
  for seed, rmse in enumerate((0.46, 0.48, 0.47)):
    write_run(root, f"vq_seed{seed}", quantizer="uvim_vq", splitting=True, rmse=rmse,
              abs_rel=0.1, delta1=0.8, usage=0.99, codes_used=4055, oracle_rmse=0.15,
              oracle_abs_rel=0.03, oracle_delta1=0.99)
  write_run(root, "vq_no_splitting_seed0", quantizer="uvim_vq", splitting=False, rmse=0.49,
            abs_rel=0.12, delta1=0.78, usage=0.0078, codes_used=32, oracle_rmse=0.2,
            oracle_abs_rel=0.04, oracle_delta1=0.97)
  out = str(tmp_path / "out")
  assert uvim_table.main([f"--sweep={root}", f"--out={out}"]) == 0
  table = open(os.path.join(out, "table2.md")).read()
  assert table == capsys.readouterr().out.split("wrote ")[0].rstrip("\n") + "\n"
  lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
  # Three seeds: the mean and the sample standard deviation (ddof 1) of 0.46, 0.48, 0.47.
  assert lines["| VQ"].startswith("| VQ | 3 | 0.47 +- 0.01 | 0.1 +- 0 | 0.8 +- 0 | 0.99 +- 0 | "
                                  "4055 +- 0 | 0.15 +- 0 |")
  assert lines["| VQ"].endswith("RMSE 0.468 +- 0.012, usage 99% |")  # same dataset: comparable
  assert lines["| VQ without splitting"].endswith("RMSE 0.490 +- 0.0037, usage 0.78% |")
  assert "baseline" not in table  # depth has no model-free baseline
  assert os.path.getsize(os.path.join(out, "figure6.png")) > 0


def test_a_sweep_without_results_is_one_error_line(tmp_path, capsys):
  assert uvim_table.main([f"--sweep={tmp_path}", f"--out={tmp_path / 'out'}"]) == 2
  assert capsys.readouterr().err.startswith("error: no UViM results.json under")
