"""scripts/study.py: Stage I trained on from a sweep's checkpoints, every checkpoint scored."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fsq_repro import api, workdir as workdir_lib
from fsq_repro.data import pipeline
from scripts import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
from tiny_configs import tiny_config

def get_config(arg=None):
  c = tiny_config(arg)
  c.eval.num_images = 90  # not a multiple of the eval batch: exact counts
  return c
"""


@pytest.mark.slow  # a Stage I subprocess, then the study's own
def test_study_trains_on_and_scores_every_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
  config_path = tmp_path / "tiny_study.py"
  config_path.write_text(CONFIG)
  arg = "quantizer=fsq,codebook_bits=6"
  demo_run = tmp_path / "sweep" / "fsq_2p6"
  subprocess.run([sys.executable, "-m", "fsq_repro.main", "--mode=stage1",
                  f"--config={config_path}:{arg}", f"--workdir={demo_run}"], cwd=ROOT,
                 check=True, capture_output=True)
  (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"runs": [
      {"name": "fsq_2p6", "arg": arg, "config": str(config_path), "overrides": []},
      {"name": "vq_2p8", "arg": "quantizer=vq,codebook_bits=8", "config": str(config_path),
       "overrides": []}]}))
  out = tmp_path / "study"
  assert study.main([f"--sweep={tmp_path / 'sweep'}", f"--out={out}", "--bits=6",
                     "--steps=8", "--every=2", "--jobs=1"]) == 0

  result = json.loads((out / "study.json").read_text())
  assert list(result["runs"]) == ["fsq_2p6"]  # only the runs at the asked sizes
  rows = result["runs"]["fsq_2p6"]["steps"]
  assert sorted(rows, key=int) == ["3", "6", "8"]  # the demo's two checkpoints, then 8
  assert result["fid_features"].startswith("offline_cnn")
  for row in rows.values():
    assert row["num_eval_images"] == 90 and row["usage"] == row["codes_used"] / 64
    assert np.isfinite(row["psnr"]) and np.isfinite(row["recon_fid"])
  assert os.path.getsize(out / "usage_vs_steps.png") > 0

  # Step 6's count equals a brute-force count of that checkpoint's codes on the 90 images.
  config = workdir_lib.saved_config(str(out / "fsq_2p6" / "stage1"))
  tokenizer = api.Tokenizer.from_workdir(str(out / "fsq_2p6"), config, step=6)
  batch = next(pipeline.create_split(config.dataset.name, "validation[0:90]", batch_size=90,
                                     image_size=16, train=False))
  codes = np.asarray(tokenizer.encode(batch["image"]))
  assert rows["6"]["codes_used"] == len(np.unique(codes))

  # A rerun trains nothing more and scores nothing twice.
  assert study.main([f"--sweep={tmp_path / 'sweep'}", f"--out={out}", "--bits=6",
                     "--steps=8", "--every=2", "--jobs=1"]) == 0
  assert json.loads((out / "study.json").read_text())["runs"]["fsq_2p6"]["steps"] == rows


def test_study_without_a_demo_says_to_run_it(tmp_path, capsys):
  assert study.main([f"--sweep={tmp_path}", f"--out={tmp_path / 'study'}"]) == 2
  assert "run `make demo`" in capsys.readouterr().err
