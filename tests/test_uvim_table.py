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


def test_table2_has_a_section_per_task_and_marks_what_is_not_comparable(tmp_path, capsys):
  depth, pan, color = (str(tmp_path / name) for name in ("depth", "pan", "color"))
  write_run(depth, "vq_seed0", quantizer="uvim_vq", splitting=True, rmse=0.47, abs_rel=0.1,
            delta1=0.8, usage=0.99, codes_used=4055)
  rows = {"vq": ("uvim_vq", True, True, 0.434), "fsq": ("fsq", None, True, 0.432),
          "vq_no_context": ("uvim_vq", True, False, 0.39),
          "fsq_no_context": ("fsq", None, False, 0.402)}
  for name, (kind, splitting, context, pq) in rows.items():
    for seed in range(3):
      write_run(pan, f"{name}_seed{seed}", task="panoptic", dataset="coco/2017_panoptic",
                num_eval_images=5000, quantizer=kind, splitting=splitting, context=context,
                pq=pq + 0.001 * seed, pq_things=0.5, pq_stuff=0.3, oracle_pq=0.758,
                usage=1.0, codes_used=4096)
  # A synthetic-label smoke run: 4 images at 16 px; its numbers must not pass for the paper's.
  write_run(color, "fsq_seed0", task="colorization", dataset="imagenet2012",
            num_eval_images=4, image_size=16, quantizer="fsq", splitting=None, psnr=20.0,
            fid=50.0, fid_features="inception_v3", fid_protocol="coltran",
            fid_reference="validation read-order images 10000..14999 at 256 px",
            baseline="gray input", baseline_psnr=18.0, baseline_fid=60.0, usage=0.5,
            codes_used=2000, codebook_size=4375)
  out = str(tmp_path / "out")
  assert uvim_table.main(["--sweep", depth, pan, color, f"--out={out}"]) == 0
  table = open(os.path.join(out, "table2.md")).read()
  sections = [line for line in table.splitlines() if line.startswith("UViM ")]
  assert [s.split(" on ")[0] for s in sections] == ["UViM depth", "UViM panoptic",
                                                   "UViM colorization"]
  lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
  # PQ printed x100 as the paper prints it; mean +- std of 43.4, 43.5, 43.6.
  assert lines["| FSQ without context"].startswith(
      "| FSQ without context | 3 | 40.3 +- 0.1 | 50 +- 0 | 30 +- 0 | 1 +- 0 | 4096 +- 0 | "
      "75.8 +- 0 |")
  assert lines["| FSQ without context"].endswith("| PQ 40.2, usage 99% |")
  assert lines["| VQ without context"].endswith("| PQ 39.0, usage 99% |")
  assert "| PQ 43.4, usage 100% |" in table and "| RMSE 0.468 +- 0.012, usage 99% |" in table
  assert lines["| FSQ"].endswith(
      "FID-5k 17.55 +- 0.057, usage 100% (not comparable: the paper: imagenet2012, 5000 "
      "images at 512 px; this: imagenet2012, 4 at 16 px) |")
  assert lines["| baseline: gray input"].startswith("| baseline: gray input | - | 18 | 60 |")
  for task in ("depth", "panoptic", "colorization"):
    assert os.path.getsize(os.path.join(out, f"figure6_{task}.png")) > 0
  assert "figure6_depth.png" in capsys.readouterr().out
