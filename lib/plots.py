"""Matplotlib figures written to workdir/plots/*.png (headless)."""
from collections.abc import Mapping, Sequence
import os

import matplotlib

matplotlib.use('Agg')
from matplotlib import collections as mpl_collections  # pylint: disable=g-import-not-at-top
from matplotlib import patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def save(fig: plt.Figure, path: str, tight: bool = True) -> str:
  """Writes `fig` as a PNG to `path` (creating its folder) and closes it.

  tight=False keeps the figure's own spacing: tight_layout costs seconds on
  figures of dozens of axes.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if tight:
    fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def lines(x: Sequence[float], series: Mapping[str, Sequence[float]], path: str, *, xlabel: str,
          ylabel: str, title: str = '', logx: bool | int = False, logy: bool = False,
          hline: float | None = None, vline: float | None = None) -> str:
  """One axis with a line per entry of `series`; optional reference lines.

  logx: True for a base-10 log axis; 2 for base 2 with a tick at each x.
  """
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, y in series.items():
    ax.plot(x, y, label=label, marker='.' if logx else None)
  if logx == 2:
    ax.set_xscale('log', base=2)
    ax.set_xticks(list(x), [str(v) for v in x])
  elif logx:
    ax.set_xscale('log')
  if hline is not None:
    ax.axhline(hline, color='gray', linestyle='--', linewidth=1)
  if vline is not None:
    ax.axvline(vline, color='tab:red', linestyle='--', linewidth=1)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if logy:
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  ax.legend()
  return save(fig, path)


def error_bars(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
               path: str, *, xlabel: str, ylabel: str, logx: bool = False) -> str:
  """One line per entry of `series`, label -> (x, mean, std), with ± std error bars."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (x, mean, std) in series.items():
    ax.errorbar(x, mean, yerr=std, label=label or None, marker='o', capsize=4)
  if logx:
    ax.set_xscale('log')
  ax.set(xlabel=xlabel, ylabel=ylabel)
  ax.grid(alpha=0.3)
  if any(series):
    ax.legend()
  return save(fig, path)


def training_curves(history: Sequence[Mapping[str, float]], path: str) -> str:
  """Train and validation curves per epoch, one panel per metric (loss, accuracy, ...)."""
  names = sorted({k[len('train_'):] for k in history[0] if k.startswith('train_')})
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
  epochs = [h['epoch'] for h in history]
  for ax, name in zip(axes[0], names):
    for split in ('train', 'val'):
      if f'{split}_{name}' in history[0]:
        ax.plot(epochs, [h[f'{split}_{name}'] for h in history], marker='.', label=split)
    ax.set(xlabel='epoch', ylabel=name)
    ax.grid(alpha=0.3)
    ax.legend()
  return save(fig, path)


def prediction_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                    class_names: Sequence[str], path: str) -> str:
  """Each test image beside the probability distribution (softmax of the logits) it got.

  Images, bars and labels share one axis, in data coordinates, and the bars are
  one collection: an axis per image and per chart, or an artist per bar, would
  take most of a second to draw.
  """
  n, k = probs.shape
  cols, side = 4, images.shape[1]
  slot = 1.3 * side / k  # One bar's width plus its gap.
  cell_w, cell_h = 2.6 * side, 1.45 * side
  rows = -(-n // cols)
  fig, ax = plt.subplots(figsize=(3.2 * cols, 1.7 * rows))
  bars, bar_color, frames = [], [], []  # Each bar as its four corners.
  for i in range(n):
    x0, y0 = i % cols * cell_w, i // cols * cell_h + 0.3 * side  # The image's top left.
    image = images[i]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray',
              extent=(x0, x0 + side, y0 + side, y0), interpolation='nearest')
    left = x0 + 1.15 * side  # The chart's left edge; y grows downwards, so bars rise to y0.
    pred, true = int(np.argmax(probs[i])), int(labels[i])
    ok = pred == true
    title = f'{class_names[pred]} {probs[i][pred]:.0%}'
    title += '' if ok else f' (true {class_names[true]})'
    ax.text((x0 + left + k * slot) / 2, y0 - 1.5, title, fontsize=8, ha='center', va='bottom',
            color='tab:blue' if ok else 'tab:red')
    frames.append(patches.Rectangle((left, y0), k * slot, side))
    for j in range(k):
      x, top = left + (j + 0.1) * slot, y0 + side - probs[i][j] * side
      bars.append(((x, y0 + side), (x + 0.8 * slot, y0 + side), (x + 0.8 * slot, top), (x, top)))
      bar_color.append('tab:blue' if j == true else 'tab:red' if j == pred else 'lightgray')
      if i + cols >= n:  # Class indices under each column's lowest chart, as on a shared axis.
        ax.text(left + (j + 0.5) * slot, y0 + side + 0.5, str(j), fontsize=5, ha='center', va='top')
  ax.add_collection(mpl_collections.PolyCollection(bars, facecolors=bar_color, edgecolors='none'))
  ax.add_collection(
      mpl_collections.PatchCollection(frames, facecolor='none', edgecolor='black', linewidth=0.6))
  ax.set(xlim=(-2, cols * cell_w), ylim=(rows * cell_h, 0), aspect='equal')
  ax.axis('off')
  ax.set_title('softmax(logits) per test image: blue = true class, red = wrong prediction')
  return save(fig, path)


def image_grid(images: np.ndarray, rows: int, path: str, title: str,
               row_labels: Sequence[str] | None = None) -> str:
  """Grayscale images in values 0..1 (each flattened or HxW[x1]) on `rows` rows, no axes.

  One mosaic in one axis, white between the tiles: an axis per image would cost
  seconds for a grid of hundreds (the VAE's manifold).
  """
  cols = len(images) // rows
  side = int(round(np.sqrt(np.asarray(images[0]).size)))
  gap = max(1, side // 8)
  tiles = np.asarray(images[:rows * cols], np.float32).reshape(rows, cols, side, side)
  mosaic = np.ones((rows, side + gap, cols, side + gap), np.float32)
  mosaic[:, gap:, :, gap:] = tiles.transpose(0, 2, 1, 3)
  mosaic = mosaic.reshape(rows * (side + gap), cols * (side + gap))[gap:, gap:]
  fig, ax = plt.subplots(figsize=(cols * 0.9, rows * 0.95 + 0.4))
  ax.imshow(mosaic, cmap='gray', vmin=0, vmax=1, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([(side + gap) * r + (side - 1) / 2 for r in range(len(row_labels or ()))],
                list(row_labels or ()), fontsize=8)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.set_title(title)
  return save(fig, path)


def heatmaps(panels: Mapping[str, np.ndarray], xticks: Sequence[str], yticks: Sequence[str],
             path: str, *, xlabel: str, ylabel: str, title: str = '') -> str:
  """One annotated heatmap per entry of `panels` (rows: yticks, columns: xticks; NaN: diverged)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
  for ax, (name, values) in zip(axes[0], panels.items()):
    ax.imshow(values, cmap='viridis', vmin=0, vmax=1, aspect='auto')
    for (i, j), v in np.ndenumerate(values):
      ax.text(j, i, 'NaN' if np.isnan(v) else f'{v:.3f}', ha='center', va='center',
              color='white' if np.isnan(v) or v < 0.6 else 'black', fontsize=8)
    ax.set_xticks(range(len(xticks)), xticks)
    ax.set_yticks(range(len(yticks)), yticks)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
  fig.suptitle(title)
  return save(fig, path)
