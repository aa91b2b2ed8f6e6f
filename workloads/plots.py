"""Matplotlib PNGs for run artifacts (headless backend). Matplotlib is imported on first use:
every Ray worker imports the pipelines, and only the driver draws."""

from __future__ import annotations

from pathlib import Path


def plot_curves(panels: dict[str, dict[str, list[tuple[float, float]]]], path: str | Path, title: str,
                xlabel: str = "step") -> Path:
    """One subplot per panel; each panel maps a series label to (x, y) points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for label, points in series.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    return _save(fig, path, title)


def plot_bars(panels: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """One subplot per panel; each panel maps a bar label to its height (the value is printed on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (panel, bars) in zip(axes[0], panels.items()):
        labels, heights = list(bars), list(bars.values())
        drawn = ax.bar(labels, heights, color="tab:blue")
        ax.bar_label(drawn, fmt="%.3f", fontsize=8)
        ax.set_title(panel)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gif_bytes(frames, seconds_per_frame: float) -> bytes:
    """RGB frames (arrays or PIL images) as a looping GIF, one frame every `seconds_per_frame`
    (the rendered rollouts of the robot pipelines)."""
    import io

    from PIL import Image

    images = [frame if isinstance(frame, Image.Image) else Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 * seconds_per_frame), loop=0)
    return buffer.getvalue()
