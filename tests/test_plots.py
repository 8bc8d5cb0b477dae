"""scripts/plot_figures.py on fake results.json files: table rows, figure data, errors."""

import csv
import json
import math

import numpy as np
from PIL import Image

from scripts import plot_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_result(quantizer, levels, codebook_size, **metrics):
  base = {"quantizer": quantizer, "levels": levels, "codebook_size": codebook_size,
          "dataset": "fsq_photo_crops", "image_size": 32, "stage1_steps": 600,
          "stage2_steps": 400, "num_eval_images": 256,
          "fid_features": "offline_photo_crops_cnn_v1", "recon_fid": None, "psnr": None,
          "usage": None, "codes_used": None, "sampling_fid": None, "best_cfg": None,
          "sampling_fid_by_cfg": None, "precision": None, "recall": None,
          "precision_by_cfg": None, "recall_by_cfg": None, "inception_score": None,
          "compression_cost_bits_per_token": None, "compression_cost_bits_per_image": None,
          "uniform_bits_per_token": math.log2(codebook_size)}
  base.update(metrics)
  return base


RESULTS = {
    "fsq_2p8": fake_result("fsq", [8, 6, 5], 240, recon_fid=30.0, psnr=21.5, usage=1.0,
                           codes_used=240, sampling_fid=40.0, best_cfg=0.1,
                           compression_cost_bits_per_token=7.5,
                           sampling_fid_by_cfg={"0.0": 45.0, "0.1": 40.0, "0.2": 41.0},
                           precision_by_cfg={"0.0": 0.5, "0.1": 0.6, "0.2": 0.7},
                           recall_by_cfg={"0.0": 0.6, "0.1": 0.5, "0.2": 0.4},
                           precision=0.6, recall=0.5),
    "fsq_2p10": fake_result("fsq", [8, 5, 5, 5], 1000, usage=0.998, codes_used=998),  # nulls
    "vq_2p8": fake_result("vq", None, 256, recon_fid=28.0, psnr=22.0, usage=0.75, codes_used=192,
                          sampling_fid=42.0, compression_cost_bits_per_token=6.0),
    "vq_2p10": fake_result("vq", None, 1024, recon_fid=27.0, usage=0.4, codes_used=410,
                           compression_cost_bits_per_token=6.5),
    "fsq_L4-4-4-4-4": fake_result("fsq", [4, 4, 4, 4, 4], 1024, recon_fid=33.0, usage=0.9,
                                  codes_used=922, sampling_fid=50.0),
}
SWEEP_ORDER = ["fsq_2p8", "fsq_2p10", "fsq_2p12", "vq_2p8", "vq_2p10", "fsq_L4-4-4-4-4"]


def write_sweep(root, results=RESULTS, order=SWEEP_ORDER):
  root.mkdir(exist_ok=True)
  for name, result in results.items():
    (root / name).mkdir()
    (root / name / "results.json").write_text(json.dumps(result))
  runs = [{"name": n, "arg": "", "workdir": str(root / n), "config": "c.py", "overrides": []}
          for n in order]
  (root / "sweep.json").write_text(json.dumps({"runs": runs}))


def line_data(ax, label):
  (line,) = [l for l in ax.get_lines() if l.get_label() == label]
  return list(line.get_xdata()), list(line.get_ydata())


def test_table_and_figures_are_written(tmp_path, capsys):
  write_sweep(tmp_path / "sweep")
  out = tmp_path / "out"
  assert plot_figures.main([f"--sweep={tmp_path / 'sweep'}", f"--out={out}"]) == 0
  for name in ("figure3.png", "figure4.png"):
    data = (out / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000

  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == ["fsq_2p8", "fsq_2p10", "vq_2p8", "vq_2p10",
                                       "fsq_L4-4-4-4-4"]  # sweep.json order, fsq_2p12 missing
  fsq8, fsq10, vq8 = rows[0], rows[1], rows[2]
  assert fsq8["levels"] == "8-6-5" and fsq8["codebook_size"] == "240"
  assert float(fsq8["log2_codebook_size"]) == math.log2(240)
  assert float(fsq8["recon_fid"]) == 30.0 and float(fsq8["compression_bits_per_token"]) == 7.5
  assert fsq8["fid_features"] == "offline_photo_crops_cnn_v1"
  assert (fsq8["stage1_steps"], fsq8["stage2_steps"]) == ("600", "400")
  assert fsq10["recon_fid"] == "" and fsq10["sampling_fid"] == "" and fsq10["usage"] == "0.998"
  assert vq8["levels"] == "" and float(vq8["uniform_bits_per_token"]) == 8.0

  md_lines = (out / "results.md").read_text().splitlines()
  assert len(md_lines) == 2 + 5
  cells = [c.strip() for c in md_lines[3].strip("|").split("|")]  # fsq_2p10, with nulls
  header = [c.strip() for c in md_lines[0].strip("|").split("|")]
  assert len(cells) == len(header) == len(plot_figures.COLUMNS)
  row = dict(zip(header, cells))
  assert row["run"] == "fsq_2p10" and row["levels"] == "8-5-5-5" and row["recon FID"] == "-"
  assert row["log2 size"] == "9.966" and row["usage (fraction)"] == "0.998"
  stdout = capsys.readouterr().out
  assert md_lines[0] in stdout and "no results yet (gaps in the figures): fsq_2p12" in stdout


def test_figure3_curves_have_gaps_and_separate_level_markers():
  results = [{**r, "name": n} for n, r in RESULTS.items()]
  fig = plot_figures.draw_figure3(results)
  recon, sampling, usage, compression = fig.axes
  assert recon.get_ylabel() == "reconstruction FID\n(offline_photo_crops_cnn_v1 features)"
  xs, ys = line_data(recon, "FSQ")
  np.testing.assert_allclose(xs, [math.log2(240), math.log2(1000)])
  assert ys[0] == 30.0 and math.isnan(ys[1])  # the null is a gap
  xs, ys = line_data(recon, "VQ")
  assert (xs, ys) == ([8.0, 10.0], [28.0, 27.0])
  assert line_data(recon, "FSQ, other levels") == ([10.0], [33.0])
  assert [t.get_text() for t in recon.texts] == ["4-4-4-4-4"]
  assert line_data(sampling, "FSQ, other levels") == ([10.0], [50.0])
  assert {l.get_label() for l in usage.get_lines()} >= {"maximum", "50%"}
  assert line_data(usage, "maximum")[1] == [1.0, 1.0] and line_data(usage, "50%")[1] == [0.5, 0.5]
  xs, ys = line_data(compression, "uniform (log2 |C|)")
  assert xs == ys and min(xs) == math.log2(240) and max(xs) == 10.0


def test_fid_axis_says_mixed_when_feature_networks_differ():
  results = [{**RESULTS["vq_2p8"], "name": "a"},
             {**RESULTS["vq_2p10"], "name": "b", "fid_features": "inception_v3_2015"}]
  fig = plot_figures.draw_figure3(results)
  assert fig.axes[0].get_ylabel() == "reconstruction FID\n(mixed features)"
  assert plot_figures.draw_figure4(results) is None  # no run swept alpha


def test_figure4_plots_fid_over_alpha_and_precision_against_recall():
  results = [{**r, "name": n} for n, r in RESULTS.items()]
  fig = plot_figures.draw_figure4(results)
  fid_ax, pr_ax = fig.axes
  assert line_data(fid_ax, "fsq_2p8") == ([0.0, 0.1, 0.2], [45.0, 40.0, 41.0])
  assert line_data(pr_ax, "fsq_2p8") == ([0.6, 0.5, 0.4], [0.5, 0.6, 0.7])
  assert [t.get_text() for t in pr_ax.texts] == ["0.0", "0.1", "0.2"]
  assert len(fid_ax.get_lines()) == 1  # the other runs have no CFG sweep


def test_figure4_compares_the_runs_nearest_1024_codes_per_quantizer():
  sweep = {"sampling_fid_by_cfg": {"0.0": 1.0}, "precision_by_cfg": {"0.0": 0.5},
           "recall_by_cfg": {"0.0": 0.5}}
  results = [fake_result(q, None, size, **sweep) | {"name": f"{q}_{size}"}
             for q, size in (("fsq", 64), ("fsq", 1000), ("fsq", 4375), ("vq", 256),
                             ("vq", 4096), ("vq", 1024))]
  fid_ax, _ = plot_figures.draw_figure4(results).axes
  assert sorted(line.get_label() for line in fid_ax.get_lines()) == ["fsq_1000", "vq_1024"]


def test_no_results_is_a_clear_error(tmp_path, capsys):
  (tmp_path / "sweep" / "fsq_2p8").mkdir(parents=True)  # a run dir without results.json
  assert plot_figures.main([f"--sweep={tmp_path / 'sweep'}", f"--out={tmp_path / 'out'}"]) == 1
  assert "error: no results under" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def write_npz(path, images, labels=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels)}
  np.savez(path, **arrays)


def random_images(rng, n, size=16):
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


SWEPT = {"sampling_fid_by_cfg": {"0": 3.0, "0.1": 2.0}, "precision_by_cfg": {"0": 0.5},
         "recall_by_cfg": {"0": 0.5}}
IMAGE_RESULTS = {  # figure4_runs picks fsq_2p10 and vq_2p10 (nearest 2^10 codes)
    "fsq_2p8": fake_result("fsq", [8, 6, 5], 240, best_cfg=0.0, **SWEPT),
    "fsq_2p10": fake_result("fsq", [8, 5, 5, 5], 1000, best_cfg=0.1, **SWEPT),
    "vq_2p10": fake_result("vq", None, 1024, best_cfg=0.0, **SWEPT),
}


def test_figure5_and_reconstructions_are_written(tmp_path, capsys):
  rng = np.random.default_rng(0)
  sweep = tmp_path / "sweep"
  write_sweep(sweep, IMAGE_RESULTS, list(IMAGE_RESULTS))
  labels = np.tile(np.arange(6), 5)  # 30 samples, classes 0..5
  write_npz(sweep / "fsq_2p10" / "eval" / "samples_cfg0.1.npz", random_images(rng, 30), labels)
  write_npz(sweep / "vq_2p10" / "eval" / "samples_cfg0.npz", random_images(rng, 30), labels)
  for name in IMAGE_RESULTS:
    write_npz(sweep / name / "eval" / "reconstructions.npz", random_images(rng, 10), np.zeros(10))
  originals = random_images(rng, 10)
  write_npz(sweep / "vq_2p10" / "eval" / "originals.npz", originals, np.zeros(10))
  out = tmp_path / "out"
  assert plot_figures.main([f"--sweep={sweep}", f"--out={out}"]) == 0

  stdout = capsys.readouterr().out
  assert f"wrote {out / 'figure5.png'}" in stdout and f"wrote {out / 'reconstructions.png'}" in stdout
  assert "skipped" not in stdout
  # 16 px images at 4x: figure5 has 4 classes x 4 samples x 64 px (+ gaps) across, 2 rows;
  # reconstructions has 8 x 64 px across, 1 + 3 rows.
  with Image.open(out / "figure5.png") as image:
    width, height = image.size
  assert width >= 16 * 64 and 2 * 64 <= height < width
  with Image.open(out / "reconstructions.png") as image:
    width, height = image.size
  assert width >= 8 * 64 and height >= 4 * 64

  fig = plot_figures.draw_reconstructions(str(sweep), [r | {"name": n}
                                                       for n, r in IMAGE_RESULTS.items()])
  assert [ax.get_title(loc="left") for ax in fig.axes] == [
      "validation crops (eval split)", "FSQ [8,6,5] |C|=240", "FSQ [8,5,5,5] |C|=1000",
      "VQ |C|=1024"]
  top = np.asarray(fig.axes[0].images[0].get_array())
  np.testing.assert_array_equal(top, np.concatenate(list(originals[:8].repeat(4, 1).repeat(4, 2)),
                                                    axis=1))


def test_figure5_rows_are_the_first_samples_of_each_class_upscaled(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.array([5, 2, 9, 2, 5, 2, 7, 2, 1, 5, 3])
  fsq_images, vq_images = random_images(rng, 11), random_images(rng, 11)
  write_npz(tmp_path / "fsq_2p10" / "eval" / "samples_cfg0.1.npz", fsq_images, labels)
  write_npz(tmp_path / "vq_2p10" / "eval" / "samples_cfg0.npz", vq_images, labels[::-1])
  results = [r | {"name": n} for n, r in IMAGE_RESULTS.items()]

  assert [list(i) for i in plot_figures.first_of_each_class(labels, [2, 5], 2)] == [[1, 3], [0, 4]]
  fig = plot_figures.draw_figure5(str(tmp_path), results, num_classes=2, per_class=3)
  fsq_ax, vq_ax = fig.axes
  assert fsq_ax.get_title(loc="left") == "FSQ [8,5,5,5] |C|=1000, alpha=0.1"
  assert vq_ax.get_title(loc="left") == "VQ |C|=1024, alpha=0"
  assert [t.get_text() for t in fsq_ax.get_xticklabels()] == ["class 1", "class 2"]
  row = np.asarray(fsq_ax.images[0].get_array())
  tile, gap = 64, plot_figures.GROUP_GAP_PX  # 16 px upscaled 4x
  assert row.shape == (tile, 2 * 3 * tile + gap, 3)
  assert (row[:, tile:3 * tile + gap] == 255).all()  # class 1 has one sample: white padding
  # Class 2's samples are 1, 3, 5 (the first three in file order, not 7), after class 1's group.
  for slot, index in enumerate([1, 3, 5]):
    x = 3 * tile + gap + slot * tile
    np.testing.assert_array_equal(row[:, x:x + tile], fsq_images[index].repeat(4, 0).repeat(4, 1))
  np.testing.assert_array_equal(row[4 * 5 + 1, 4 * 7 + 2], fsq_images[8][5, 7])  # class 1: #8
  vq_row = np.asarray(vq_ax.images[0].get_array())  # reversed labels: class 1 is sample 2
  np.testing.assert_array_equal(vq_row[:tile, :tile], vq_images[2].repeat(4, 0).repeat(4, 1))


def test_missing_npz_files_are_skipped_with_a_message(tmp_path, capsys):
  rng = np.random.default_rng(2)
  sweep = tmp_path / "sweep"
  write_sweep(sweep, IMAGE_RESULTS, list(IMAGE_RESULTS))
  write_npz(sweep / "fsq_2p10" / "eval" / "samples_cfg0.1.npz", random_images(rng, 4), [0, 0, 1, 1])
  (sweep / "vq_2p10" / "eval").mkdir()
  (sweep / "vq_2p10" / "eval" / "reconstructions.npz").write_bytes(b"not an npz")
  write_npz(sweep / "fsq_2p8" / "eval" / "reconstructions.npz", random_images(rng, 3), [0, 1, 2])
  out = tmp_path / "out"
  assert plot_figures.main([f"--sweep={sweep}", f"--out={out}"]) == 0

  stdout = capsys.readouterr().out
  assert "figure5.png: skipped vq_2p10 (no eval/samples_cfg0.npz)" in stdout
  skipped = [line for line in stdout.splitlines() if line.startswith("reconstructions.png: skipped")]
  assert len(skipped) == 1 and "fsq_2p10 (no eval/reconstructions.npz)" in skipped[0]
  assert "vq_2p10 (eval/reconstructions.npz unreadable" in skipped[0]
  assert "no run has eval/originals.npz" in stdout
  for name in ("results.csv", "figure3.png", "figure4.png", "figure5.png", "reconstructions.png"):
    assert (out / name).exists()  # FSQ's row alone; reconstructions without the originals
  fig = plot_figures.draw_reconstructions(str(sweep), [r | {"name": n}
                                                       for n, r in IMAGE_RESULTS.items()])
  assert [ax.get_title(loc="left") for ax in fig.axes] == ["FSQ [8,6,5] |C|=240"]
  assert "originals not shown" in fig.get_suptitle()
  row = np.asarray(fig.axes[0].images[0].get_array())
  assert row.shape == (64, 8 * 64, 3) and (row[:, 3 * 64:] == 255).all()  # 3 of 8, padded


def test_nothing_to_draw_writes_no_image(tmp_path, capsys):
  write_sweep(tmp_path / "sweep")  # no eval/*.npz at all
  out = tmp_path / "out"
  assert plot_figures.main([f"--sweep={tmp_path / 'sweep'}", f"--out={out}"]) == 0
  stdout = capsys.readouterr().out
  assert "figure5.png not written" in stdout and "reconstructions.png not written" in stdout
  assert not (out / "figure5.png").exists() and not (out / "reconstructions.png").exists()
  assert (out / "figure4.png").exists()
