"""Matplotlib figures written to workdir/plots/*.png (headless)."""
from collections.abc import Mapping, Sequence
import os

import matplotlib

matplotlib.use('Agg')
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
  """Each test image beside the probability distribution (softmax of the logits) it got."""
  n = len(images)
  cols = 4
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.2 * cols, 1.7 * rows), squeeze=False,
                           gridspec_kw={'width_ratios': [1, 1.4] * cols})
  for i in range(rows * cols):
    ax_img, ax_bar = axes[i // cols][2 * (i % cols)], axes[i // cols][2 * (i % cols) + 1]
    ax_img.axis('off')
    if i >= n:
      ax_bar.axis('off')
      continue
    image = images[i]
    ax_img.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
    pred = int(np.argmax(probs[i]))
    ok = pred == int(labels[i])
    ax_img.set_title(f'{class_names[pred]} {probs[i][pred]:.0%}', fontsize=8,
                     color='tab:blue' if ok else 'tab:red')
    bars = ax_bar.bar(range(len(probs[i])), probs[i], color='lightgray')
    bars[pred].set_color('tab:red')
    bars[int(labels[i])].set_color('tab:blue')
    ax_bar.set_ylim(0, 1)
    ax_bar.set_xticks(range(len(probs[i])))
    ax_bar.tick_params(labelsize=6)
  fig.suptitle('softmax(logits) per test image: blue = true class, red = wrong prediction')
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.06, top=0.88, wspace=0.25, hspace=0.6)
  return save(fig, path, tight=False)


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
