"""The one video writer (infinite zoom, and any later video job): H.264 mp4 through the ffmpeg binary that
imageio-ffmpeg ships, frames streamed (a minute of 512×512 video is 1,800 frames, too many to hold)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


def write_video(frames: Iterable[Image.Image], path: Path, fps: int, size: tuple[int, int]) -> int:
    """H.264 (yuv420p) mp4 of the frames at `path` (the caller makes it atomic); returns the count.

    macro_block_size=1: imageio-ffmpeg would otherwise resize sizes that are not multiples of 16
    (ours are multiples of 8, and yuv420p only needs even sides)."""
    import imageio_ffmpeg

    count = 0
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=8, ffmpeg_log_level="error")
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"), dtype=np.uint8)))
            count += 1
    finally:
        writer.close()
    return count


@dataclass
class SavedVideo:
    """What a video job leaves behind (the infinite zoom, prompt travel): the mp4 (None when no frame was
    made), its frame count, rate and size, whether the job was cut short, and the last infotext."""

    video: Path | None
    frames: int
    fps: int
    size: tuple[int, int]
    interrupted: bool
    seconds: float
    info: str
