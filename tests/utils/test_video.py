"""ebm_refine.utils.video: frame sources and the outputs that appear only when complete."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ebm_refine.utils import BadValueError, ImageDecodeError, MissingFileError, file_lock
from ebm_refine.utils.fileio import default_file_mode
from ebm_refine.utils.video import (FrameSource, ImageFolderOutput, VideoOutput, open_images, open_video,
                                    open_webcam, output_target, write_frames)


def _frame(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    img = np.full((h, w, 3), 30, np.uint8)
    cv2.rectangle(img, (4 + 5 * i, 8), (24 + 5 * i, 30), (0, 200, 255), -1)
    return img


def _video(path: Path, n: int, fps: float = 7.0, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        writer.write(_frame(i, *size))
    writer.release()
    return path


def _video_info(path: Path):
    """(frame count, width, height) as OpenCV reads them back."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    info = tuple(int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                           cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return info


def _hidden(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _source(n: int, live: bool = False) -> FrameSource:
    return FrameSource("clip", _frame(0), iter([_frame(i) for i in range(1, n)]), 5.0, n, live=live)


# ------------------------------------------------------------------------------------------- sources
def test_open_images_resizes_keeps_names_and_reports_truncated_jpegs(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(64, 48), (64, 48), (100, 80)]):
        p = folder / f"{i}.png"
        cv2.imwrite(str(p), _frame(i, *size))
        paths.append(str(p))
    jpeg = folder / "3.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # enough entropy-coded data
    cv2.imwrite(str(jpeg), noise)
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) * 2 // 3])
    paths.append(str(jpeg))
    truncated = []
    source = open_images(paths, 4.0, truncated.append)
    assert (source.name, source.fps, source.total, source.size) == ("seq", 4.0, 4, (64, 48))
    assert source.names == ["0.png", "1.png", "2.png", "3.jpg"]
    frames = list(source)
    assert [f.shape for f in frames] == [(48, 64, 3)] * 4  # the 100x80 image is resized to the first one's size
    np.testing.assert_array_equal(frames[1], cv2.imread(paths[1]))
    assert truncated == [str(jpeg)]
    # without a callback a truncated JPEG is an error naming it, raised when the iteration reaches it
    strict = open_images(paths, 4.0, name="named")
    assert strict.name == "named"
    with pytest.raises(ImageDecodeError, match="3.jpg: truncated JPEG"):
        list(strict)
    with pytest.raises(MissingFileError, match="nope.png"):
        open_images([str(folder / "nope.png")], 4.0)


def test_open_video_reads_every_frame_and_names_bad_files(tmp_path):
    source = open_video(str(_video(tmp_path / "clip.mp4", 5)))
    assert (source.name, source.total, source.size, source.live) == ("clip", 5, (64, 48), False)
    assert source.fps == pytest.approx(7.0)
    frames = list(source)
    assert len(frames) == 5 and all(f.shape == (48, 64, 3) for f in frames)
    with pytest.raises(MissingFileError, match="does not exist"):
        open_video(str(tmp_path / "missing.mp4"))
    with pytest.raises(BadValueError, match="is not a file"):
        open_video(str(tmp_path))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 500)
    with pytest.raises(BadValueError, match="cannot open video|yields no frames"):
        open_video(str(junk))
    with pytest.raises(BadValueError, match="cannot open webcam 57"):
        open_webcam(57)


# ------------------------------------------------------------------------------------------- outputs
def test_video_output_replaces_the_target_only_on_commit(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"an earlier complete video")
    out = VideoOutput(str(target), 5.0, (64, 48), "prog")
    out.write(_frame(0))
    out.write(_frame(1, 100, 80))  # resized to the output's size
    assert target.read_bytes() == b"an earlier complete video"
    assert [n for n in _hidden(tmp_path) if n.endswith(".partial.mp4")] and ".out.mp4.lock" in _hidden(tmp_path)
    assert out.commit() == str(target)
    assert _video_info(target) == (2, 64, 48)
    assert os.stat(target).st_mode & 0o777 == default_file_mode()
    assert _hidden(tmp_path) == []  # no partial file, no lock
    # abort: the target stays as it was; no frames: an error and nothing written
    before = target.read_bytes()
    out = VideoOutput(str(target), 5.0, (64, 48))
    out.write(_frame(2))
    out.abort()
    assert target.read_bytes() == before and _hidden(tmp_path) == []
    with pytest.raises(BadValueError, match="no frames were written"):
        VideoOutput(str(tmp_path / "empty.mp4"), 5.0, (64, 48)).commit()
    assert not (tmp_path / "empty.mp4").exists() and _hidden(tmp_path) == []


def test_stale_partials_are_removed_and_a_busy_target_refused(tmp_path):
    stale = tmp_path / ".out.k2j4h1x9.partial.mp4"      # what a SIGKILLed run leaves behind
    stale.write_bytes(b"\x00" * 10)
    other = tmp_path / ".other.k2j4h1x9.partial.mp4"    # another output's: not ours to remove
    other.write_bytes(b"\x00")
    with file_lock(str(tmp_path / ".out.mp4.lock"), blocking=False) as held:
        assert held
        with pytest.raises(BadValueError, match="another prog run is writing .*out.mp4"):
            VideoOutput(str(tmp_path / "out.mp4"), 5.0, (64, 48), "prog")
        assert stale.exists()
    out = VideoOutput(str(tmp_path / "out.mp4"), 5.0, (64, 48))
    assert not stale.exists() and other.exists()
    out.abort()
    frames = tmp_path / "frames"
    (frames / ".partial.abc").mkdir(parents=True)
    (frames / ".partial.abc" / "0.png").write_bytes(b"x")
    with file_lock(str(frames / ".output.lock"), blocking=False):
        with pytest.raises(BadValueError, match="another process is writing"):
            ImageFolderOutput(str(frames))
    ImageFolderOutput(str(frames)).abort()
    assert _hidden(frames) == []


def test_image_folder_output_moves_frames_in_on_commit(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "keep.txt").write_text("a file of an earlier run")
    out = ImageFolderOutput(str(folder))
    out.write(_frame(0), "a.png")
    out.write(_frame(1))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["keep.txt"]
    out.commit()
    assert sorted(p.name for p in folder.iterdir()) == ["000001.jpg", "a.png", "keep.txt"]
    np.testing.assert_array_equal(cv2.imread(str(folder / "a.png")), _frame(0))
    out = ImageFolderOutput(str(folder))
    out.write(_frame(2), "b.png")
    out.abort()
    assert sorted(p.name for p in folder.iterdir()) == ["000001.jpg", "a.png", "keep.txt"]


def test_output_target(tmp_path):
    assert output_target(str(tmp_path / "o" / "x.mp4"), "clip", images=True) == (str(tmp_path / "o" / "x.mp4"), True)
    assert output_target(str(tmp_path / "d"), "clip", images=False) == (str(tmp_path / "d" / "clip.mp4"), True)
    assert output_target(str(tmp_path / "d"), "clip", images=True) == (str(tmp_path / "d"), False)
    with pytest.raises(BadValueError, match="only .mp4"):
        output_target(str(tmp_path / "x.avi"), "clip", images=False)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(BadValueError, match="is a folder"):
        output_target(str(tmp_path / "dir.mp4"), "clip", images=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(BadValueError, match="not writable"):
        output_target(str(tmp_path / "file" / "sub"), "clip", images=False)


# ------------------------------------------------------------------------------------------- the loop
def _interrupt_on(call: int):
    calls = []

    def render(i, frame):
        calls.append(i)
        if len(calls) == call:
            raise KeyboardInterrupt
        return frame

    return render


def test_write_frames_commits_limits_and_discards_on_failure(tmp_path):
    target = tmp_path / "v.mp4"
    assert write_frames(_source(5), VideoOutput(str(target), 5.0, (64, 48)), lambda i, f: f, max_frames=3) == 3
    assert _video_info(target) == (3, 64, 48)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt) as err:
        write_frames(_source(5), VideoOutput(str(target), 5.0, (64, 48)), _interrupt_on(3))
    assert str(err.value) == f"after 2 frame(s); the partial render was discarded and {target} was left as it was"
    assert target.read_bytes() == before and _hidden(tmp_path) == []
    fresh = tmp_path / "fresh.mp4"
    with pytest.raises(KeyboardInterrupt, match="was not written"):
        write_frames(_source(5), VideoOutput(str(fresh), 5.0, (64, 48)), _interrupt_on(2))
    assert not fresh.exists()

    def broken(i, frame):
        raise ValueError("a bug in the renderer")

    with pytest.raises(ValueError, match="a bug"):
        write_frames(_source(3), VideoOutput(str(target), 5.0, (64, 48)), broken)
    assert target.read_bytes() == before and _hidden(tmp_path) == []


def test_write_frames_keeps_a_live_recording_ended_with_ctrl_c(tmp_path):
    target = tmp_path / "cam.mp4"
    assert write_frames(_source(6, live=True), VideoOutput(str(target), 5.0, (64, 48)), _interrupt_on(4)) == 3
    assert _video_info(target) == (3, 64, 48) and _hidden(tmp_path) == []
