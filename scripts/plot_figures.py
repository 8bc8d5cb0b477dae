"""Collects a sweep's results.json files into a table and draws Figures 3 and 4 of the paper.

  python scripts/plot_figures.py --sweep=/data/runs/tradeoff_128 --out=figures/tradeoff_128

Reads <sweep>/*/results.json (and <sweep>/sweep.json, written by scripts/sweep.py, for the run
order and to name runs that have no results yet). Writes results.csv and results.md (one row per
run; the table is also printed), figure3.png (against log2 |C|: reconstruction FID, sampling
FID, codebook usage, compression cost) and figure4.png (sampling FID against the CFG weight
alpha, precision against recall over alpha, for each quantizer's run nearest 2^10 codes, as in
the paper) when some run has a CFG sweep, and
training_study.png (codes used per batch and reconstruction loss against Stage I steps for
the largest codebook of each quantizer, from the runs' stage1/metrics.jsonl). FSQ runs whose levels
are not App. A.4.1's for their size are drawn as separate, labelled markers. Missing runs and
null values leave gaps.

Also draws two image grids from the runs' ADM-format eval/*.npz files (runs lacking the file
are skipped, with one printed line naming them):
figure5.png, the paper's Figure 5: non-cherry-picked class-conditional samples at the best
alpha (eval/samples_cfg<best_cfg>.npz), the first few samples of each of a few classes in
file order, an FSQ row against a VQ row, for the same two runs as figure4.png; and
reconstructions.png: the first eval-split crops (eval/originals.npz of the first run that has
one; left out, and the title says so, when none has) above each run's reconstructions of them
(eval/reconstructions.npz), FSQ then VQ by codebook size.
"""

import argparse
import csv
import glob
import json
import math
import os
import sys
import zipfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from fsq_repro.eval import adm_npz  # pylint: disable=g-import-not-at-top
from fsq_repro.quantizers.fsq import LEVELS_FOR_CODEBOOK_SIZE

# (key in a table row, markdown header).
COLUMNS = (
    ("name", "run"), ("quantizer", "quantizer"), ("levels", "levels"),
    ("codebook_size", "codebook size"), ("log2_codebook_size", "log2 size"),
    ("recon_fid", "recon FID"), ("psnr", "PSNR (dB)"), ("usage", "usage (fraction)"),
    ("codes_used", "codes used"), ("sampling_fid", "sampling FID"), ("best_cfg", "best alpha"),
    ("precision", "precision"), ("recall", "recall"),
    ("compression_bits_per_token", "compression (bits/token)"),
    ("uniform_bits_per_token", "uniform (bits/token)"), ("fid_features", "FID features"),
    ("stage1_steps", "Stage I steps"), ("stage2_steps", "Stage II steps"),
)
COLORS = {"vq": "tab:blue", "fsq": "tab:orange", "fsq_other_levels": "tab:green"}


def load_results(root: str) -> tuple[list[dict], list[str]]:
  """Results (with "name": the run's directory) in sweep.json order, and listed runs lacking one."""
  found = {os.path.basename(os.path.dirname(path)): path
           for path in glob.glob(os.path.join(root, "*", "results.json"))}
  listed = []
  if os.path.exists(os.path.join(root, "sweep.json")):
    with open(os.path.join(root, "sweep.json")) as f:
      listed = [run["name"] for run in json.load(f)["runs"]]
  order = listed + sorted(set(found) - set(listed))
  results = []
  for name in order:
    if name in found:
      with open(found[name]) as f:
        results.append({**json.load(f), "name": name})
  return results, [name for name in listed if name not in found]


def log2_size(result: dict) -> float | None:
  size = result.get("codebook_size")
  return math.log2(size) if size else None


def on_main_curve(result: dict) -> bool:
  """False only for FSQ runs whose levels are not App. A.4.1's for the nearest power of two."""
  levels, bits = result.get("levels"), log2_size(result)
  if result.get("quantizer") != "fsq" or levels is None or bits is None:
    return True
  return list(LEVELS_FOR_CODEBOOK_SIZE.get(2**round(bits), ())) == list(levels)


def table_row(result: dict) -> dict:
  row = {key: result.get(key) for key, _ in COLUMNS}
  row["log2_codebook_size"] = log2_size(result)
  row["compression_bits_per_token"] = result.get("compression_cost_bits_per_token")
  return row


def format_cell(value, markdown: bool) -> str:
  if value is None:
    return "-" if markdown else ""
  if isinstance(value, (list, tuple)):
    return "-".join(str(v) for v in value)
  if isinstance(value, float):
    return f"{value:.4g}" if markdown else repr(value)
  return str(value)


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([key for key, _ in COLUMNS])
    for row in rows:
      writer.writerow([format_cell(row[key], markdown=False) for key, _ in COLUMNS])


def markdown_table(rows: list[dict]) -> str:
  lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  for row in rows:
    cells = [format_cell(row[key], markdown=True).replace("|", "\\|") for key, _ in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def common_value(results: list[dict], key: str) -> str:
  """The one value of `key` among the runs that set it, "mixed", or "unknown"."""
  values = {str(r[key]) for r in results if r.get(key) is not None}
  return values.pop() if len(values) == 1 else ("mixed" if values else "unknown")


def as_float(value) -> float:
  return math.nan if value is None else float(value)


def plot_against_size(ax, results: list[dict], key: str) -> None:
  """VQ and FSQ curves of results[key] over log2 |C|; other FSQ levels as labelled markers."""
  sized = sorted((r for r in results if log2_size(r) is not None), key=log2_size)
  for quantizer in ("vq", "fsq"):
    curve = [r for r in sized if r.get("quantizer") == quantizer and on_main_curve(r)]
    if curve:
      ax.plot([log2_size(r) for r in curve], [as_float(r.get(key)) for r in curve], "o-",
              color=COLORS[quantizer], label=quantizer.upper())
  others = [r for r in sized if not on_main_curve(r)]
  if others:
    xs, ys = [log2_size(r) for r in others], [as_float(r.get(key)) for r in others]
    ax.plot(xs, ys, "D", linestyle="none", color=COLORS["fsq_other_levels"],
            label="FSQ, other levels")
    for x, y, r in zip(xs, ys, others):
      if not math.isnan(y):
        ax.annotate("-".join(str(l) for l in r["levels"]), (x, y), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
  ax.set_xlabel("log2 |C|")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.margins(x=0.08)  # room for the level labels
  ax.grid(alpha=0.3)


def draw_figure3(results: list[dict]):
  features = common_value(results, "fid_features")
  fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
  (a, b), (c, d) = axes
  plot_against_size(a, results, "recon_fid")
  a.set(title="(a) Reconstruction FID", ylabel=f"reconstruction FID\n({features} features)")
  plot_against_size(b, results, "sampling_fid")
  b.set(title="(b) Sampling FID (best alpha)", ylabel=f"sampling FID\n({features} features)")
  plot_against_size(c, results, "usage")
  c.axhline(1.0, color="gray", linestyle="--", label="maximum")
  c.axhline(0.5, color="gray", linestyle=":", label="50%")
  c.set(title="(c) Codebook usage", ylabel="codebook usage (fraction of |C|)")
  plot_against_size(d, results, "compression_cost_bits_per_token")
  sizes = sorted({log2_size(r) for r in results if log2_size(r) is not None})
  if sizes:
    d.plot(sizes, sizes, color="gray", linestyle="--", label="uniform (log2 |C|)")
  d.set(title="(d) Compression cost", ylabel="compression cost (bits per token)")
  for ax in axes.flat:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.suptitle(f"{common_value(results, 'dataset')} at {common_value(results, 'image_size')} px, "
               f"{len(results)} runs")
  fig.tight_layout()
  return fig


def cfg_values(result: dict, key: str, alphas: list[str]) -> list[float]:
  """The values of the {"alpha": value} dict result[key] at `alphas`; missing or null: NaN."""
  by_cfg = result.get(key) or {}
  return [as_float(by_cfg.get(alpha)) for alpha in alphas]


FIGURE4_LOG2_SIZE = 10  # the paper's Figure 4: FSQ [8, 5, 5, 5] (|C| = 1000) vs VQ 1024


def figure4_runs(results: list[dict]) -> list[dict]:
  """Per quantizer, the run with a CFG sweep whose |C| is nearest 2^10 (ties: the first)."""
  chosen = {}
  for r in results:
    bits = log2_size(r)
    if not r.get("sampling_fid_by_cfg") or bits is None:
      continue
    best = chosen.get(r.get("quantizer"))
    if best is None or abs(bits - FIGURE4_LOG2_SIZE) < abs(log2_size(best) - FIGURE4_LOG2_SIZE):
      chosen[r.get("quantizer")] = r
  return list(chosen.values())


def draw_figure4(results: list[dict]):
  """Sampling FID vs alpha and precision vs recall over alpha for `figure4_runs`; None if
  no run swept alpha."""
  swept = figure4_runs(results)
  if not swept:
    return None
  features = common_value(swept, "fid_features")
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  for r in swept:
    alphas = sorted(r["sampling_fid_by_cfg"], key=float)
    left.plot([float(a) for a in alphas], cfg_values(r, "sampling_fid_by_cfg", alphas), "o-",
              label=r["name"])
    alphas = sorted(r.get("precision_by_cfg") or {}, key=float)
    precision = cfg_values(r, "precision_by_cfg", alphas)
    recall = cfg_values(r, "recall_by_cfg", alphas)
    right.plot(recall, precision, "o-", label=r["name"])
    for alpha, x, y in zip(alphas, recall, precision):
      if not (math.isnan(x) or math.isnan(y)):
        right.annotate(alpha, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  left.set(title="Sampling FID vs CFG weight", xlabel="CFG weight alpha",
           ylabel=f"sampling FID\n({features} features)")
  right.set(title="Precision vs recall (labels: alpha)", xlabel="recall", ylabel="precision")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def read_metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def draw_training_study(root: str, results: list[dict]):
  """Codes used per batch and reconstruction loss against Stage I steps, largest |C| of each.

  Shows where the usage and reconstruction trends are heading when a short run has not
  converged. Returns None when no Stage I metrics.jsonl is found.
  """
  largest = {}
  for r in results:
    if r.get("codebook_size") and on_main_curve(r):
      if r["quantizer"] not in largest or r["codebook_size"] > largest[r["quantizer"]]["codebook_size"]:
        largest[r["quantizer"]] = r
  curves = {q: read_metrics(os.path.join(root, r["name"], "stage1", "metrics.jsonl"))
            for q, r in largest.items()}
  curves = {q: m for q, m in curves.items() if m}
  if not curves:
    return None
  fig, (ax_usage, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
  for quantizer, metrics in sorted(curves.items()):
    r = largest[quantizer]
    steps = [m["step"] for m in metrics]
    label = f"{quantizer.upper()} {r['name']} (|C| = {r['codebook_size']})"
    ax_usage.plot(steps, [m.get("codes_used_in_batch", math.nan) for m in metrics], label=label)
    ax_loss.plot(steps, [m.get("reconstruction_loss", math.nan) for m in metrics], label=label)
  ax_usage.set(xlabel="Stage I step", ylabel="distinct codes in a training batch",
               title="codebook use during training")
  ax_loss.set(xlabel="Stage I step", ylabel="L2 reconstruction loss (train batch)",
              title="reconstruction during training", yscale="log")
  for ax in (ax_usage, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


MIN_TILE_PX = 64  # images are upscaled (nearest neighbour) to at least this many pixels
GROUP_GAP_PX = 8  # white pixels between figure5.png's class groups
FIGURE5_CLASSES, FIGURE5_PER_CLASS = 4, 4
NUM_RECONSTRUCTIONS = 8


def read_adm_npz(path: str, with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """arr_0 (uint8 [N, H, W, 3], checked by adm_npz) and arr_1 (labels; None unless
  `with_labels`) of an ADM .npz. Raises OSError when the file is missing, ValueError when it
  is not such a batch."""
  images = adm_npz.load_images(path)
  if not with_labels:
    return images, None
  with np.load(path) as data:
    labels = data["arr_1"] if "arr_1" in data else None
  if labels is None or labels.shape != images.shape[:1]:
    raise ValueError("arr_1 is not one label per image")
  return images, labels


def samples_filename(result: dict) -> str | None:
  """eval/'s file of best-alpha samples, named as the eval names it ("samples_cfg0.1.npz")."""
  best = result.get("best_cfg")
  return None if best is None else f"samples_cfg{float(best):g}.npz"


def read_runs(root: str, runs: list[dict], filename_of, figure: str,
              with_labels: bool = True) -> list[tuple]:
  """(run, images, labels) for each run whose <root>/<name>/eval/<filename_of(run)> reads;
  prints one line naming the runs skipped and why."""
  read, skipped = [], []
  for r in runs:
    filename = filename_of(r)
    if filename is None:
      skipped.append(f"{r['name']} (no best_cfg)")
      continue
    try:
      path = os.path.join(root, r["name"], "eval", filename)
      read.append((r, *read_adm_npz(path, with_labels)))
    except FileNotFoundError:
      skipped.append(f"{r['name']} (no eval/{filename})")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      skipped.append(f"{r['name']} (eval/{filename} unreadable: {e})")
  if skipped:
    print(f"{figure}: skipped {', '.join(skipped)}")
  return read


def upscale(images: np.ndarray) -> np.ndarray:
  """Nearest-neighbour upscaling of uint8 [N, H, W, 3] images to at least MIN_TILE_PX rows."""
  scale = max(1, math.ceil(MIN_TILE_PX / images.shape[1]))
  return images.repeat(scale, axis=1).repeat(scale, axis=2)


def tile_row(groups: list[np.ndarray], width: int, gap: int = 0) -> np.ndarray:
  """One uint8 [H, W, 3] image: each group's [n, H, w, 3] images side by side, the group padded
  with white to `width` images, and `gap` white columns between groups."""
  _, h, w, _ = groups[0].shape
  step = width * w + gap
  row = np.full((h, len(groups) * step - gap, 3), 255, np.uint8)
  for g, images in enumerate(groups):
    for i, image in enumerate(images[:width]):
      row[:, g * step + i * w:g * step + (i + 1) * w] = image
  return row


def first_of_each_class(labels: np.ndarray, classes: list[int], k: int) -> list[np.ndarray]:
  """Indices of the first k samples of each class in file order: no selection by quality."""
  return [np.flatnonzero(labels == c)[:k] for c in classes]


def class_row(images: np.ndarray, labels: np.ndarray, classes: list[int], k: int):
  """figure5.png's row of one run: the first k samples of each class, classes side by side,
  and the (x position, "class c") tick of each class group."""
  groups = [upscale(images[i]) for i in first_of_each_class(labels, classes, k)]
  w = groups[0].shape[2]
  ticks = [(g * (k * w + GROUP_GAP_PX) + k * w / 2, f"class {c}") for g, c in enumerate(classes)]
  return tile_row(groups, k, GROUP_GAP_PX), ticks


def run_label(result: dict) -> str:
  """E.g. "FSQ [8,5,5,5] |C|=1000" or "VQ |C|=1024"."""
  levels = result.get("levels")
  levels = f" [{','.join(str(l) for l in levels)}]" if levels else ""
  return f"{str(result.get('quantizer')).upper()}{levels} |C|={result.get('codebook_size')}"


def draw_image_rows(rows: list[tuple[str, np.ndarray, list]], title: str):
  """One axes per (label, uint8 image, x ticks) row, stacked, each label above its row."""
  width = max(image.shape[1] for _, image, _ in rows)
  heights = [image.shape[0] for _, image, _ in rows]
  fig, axes = plt.subplots(len(rows), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                           figsize=(max(6.0, width / 100), sum(h / 100 + 0.6 for h in heights)))
  for ax, (label, image, ticks) in zip(axes[:, 0], rows):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(label, loc="left", fontsize=9)
    ax.set_xticks([x for x, _ in ticks], [text for _, text in ticks])
    ax.set_yticks([])
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
      spine.set_visible(False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def draw_figure5(root: str, results: list[dict], num_classes: int = FIGURE5_CLASSES,
                 per_class: int = FIGURE5_PER_CLASS):
  """Figure 5: best-alpha samples of `figure4_runs`, one row each, the first `per_class`
  samples of the first `num_classes` classes all rows have; None if there are none."""
  runs = read_runs(root, figure4_runs(results), samples_filename, "figure5.png")
  if not runs:
    return None
  classes = sorted(set.intersection(*(set(labels.tolist()) for _, _, labels in runs)))
  if not classes:
    print("figure5.png: the runs' samples have no class in common")
    return None
  classes = classes[:num_classes]
  rows = []
  for r, images, labels in runs:
    label = f"{run_label(r)}, alpha={float(r['best_cfg']):g}"
    rows.append((label, *class_row(images, labels, classes, per_class)))
  return draw_image_rows(rows, f"Non-cherry-picked samples at the best alpha: the first "
                               f"{per_class} of each class in file order")


def first_originals(root: str, runs: list[dict]) -> np.ndarray | None:
  """arr_0 of the first of `runs` with a readable eval/originals.npz (eval-split crops)."""
  for r in runs:
    try:
      return read_adm_npz(os.path.join(root, r["name"], "eval", "originals.npz"),
                          with_labels=False)[0]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
      continue
  return None


def draw_reconstructions(root: str, results: list[dict], count: int = NUM_RECONSTRUCTIONS):
  """The first `count` eval crops (if some run has eval/originals.npz) above each run's
  reconstructions of them, runs by quantizer then |C|; None if no run has reconstructions."""
  ordered = sorted(results, key=lambda r: (str(r.get("quantizer")), r.get("codebook_size") or 0))
  runs = read_runs(root, ordered, lambda r: "reconstructions.npz", "reconstructions.png",
                   with_labels=False)
  if not runs:
    return None
  rows = [(run_label(r), tile_row([upscale(images[:count])], count), [])
          for r, images, _ in runs]
  originals = first_originals(root, ordered)
  if originals is None:
    print("reconstructions.png: no run has eval/originals.npz; drawing the reconstructions only")
    return draw_image_rows(rows, f"Reconstructions of the first {count} eval-split images "
                                 "(originals not shown: no run has eval/originals.npz)")
  rows.insert(0, ("validation crops (eval split)", tile_row([upscale(originals[:count])], count),
                  []))
  return draw_image_rows(rows, f"The first {count} eval-split images and their reconstructions")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="sweep root holding <name>/results.json")
  parser.add_argument("--out", required=True, help="output directory for the table and figures")
  args = parser.parse_args(argv)
  results, missing = load_results(args.sweep)
  if not results:
    print(f"error: no results under {args.sweep}/*/results.json; run the eval stage first "
          "(scripts/sweep.py --run)", file=sys.stderr)
    return 1
  os.makedirs(args.out, exist_ok=True)
  rows = [table_row(r) for r in results]
  write_csv(rows, os.path.join(args.out, "results.csv"))
  table = markdown_table(rows)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table)
  print(table)
  if missing:
    print(f"no results yet (gaps in the figures): {', '.join(missing)}")
  # Drawn one at a time, so a figure that fails leaves the ones before it written.
  figures = {"figure3.png": lambda: draw_figure3(results),
             "figure4.png": lambda: draw_figure4(results),
             "training_study.png": lambda: draw_training_study(args.sweep, results),
             "figure5.png": lambda: draw_figure5(args.sweep, results),
             "reconstructions.png": lambda: draw_reconstructions(args.sweep, results)}
  for filename, draw in figures.items():
    fig = draw()
    if fig is None:
      print(f"{filename} not written: no run has the data for it")
      continue
    fig.savefig(os.path.join(args.out, filename), dpi=120)
    plt.close(fig)
    print(f"wrote {os.path.join(args.out, filename)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
