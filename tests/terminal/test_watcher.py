"""The camera folder: half-written files are not taken, each image is submitted once, with its
stem as the part id, and moved into inspected/ when done. Polls are driven by hand with an
explicit clock, so the tests neither sleep nor race."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import pytest

from autoweld.terminal.watcher import INSPECTED, FolderWatcher, WatchConfig, is_candidate


class Recorder:
    """Stands in for Station.submit; completes futures when told to."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Path, str]] = []
        self.futures: list[Future] = []
        self.refuse = refuse or set()

    def __call__(self, part_id: str, *, path: Path, source: str) -> Future:
        if part_id in self.refuse:
            raise ValueError(f"part_id refused: {part_id}")
        self.calls.append((part_id, path, source))
        future: Future = Future()
        self.futures.append(future)
        return future

    def finish_all(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


@pytest.fixture
def camera(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    return folder


def watcher_for(folder: Path, recorder: Recorder, **kwargs) -> FolderWatcher:
    config = WatchConfig(folder, settle_s=kwargs.pop("settle_s", 0.5), **kwargs)
    watcher = FolderWatcher(config, recorder)
    watcher.done_dir.mkdir(exist_ok=True)
    return watcher


def test_candidates():
    assert is_candidate("VIN-1.png") and is_candidate("a.JPG") and is_candidate("x.bmp")
    for name in (".VIN-1.png", "VIN-1.png.tmp", "VIN-1.png.part", "notes.txt", "VIN", ".png"):
        assert not is_candidate(name), name


def test_file_is_taken_only_after_its_size_holds_still(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    image = camera / "VIN-00042.png"
    image.write_bytes(b"\x89PNG half")
    assert watcher.poll(now=0.0) == []  # first sight
    assert watcher.poll(now=0.4) == []  # not settled yet
    with open(image, "ab") as handle:  # the camera is still writing
        handle.write(b" more bytes")
    os.utime(image, ns=(1, 1_000_000_000))
    assert watcher.poll(now=0.6) == []  # changed: the clock starts again
    assert watcher.poll(now=1.0) == []
    assert watcher.poll(now=1.2) == ["VIN-00042.png"]
    assert recorder.calls == [("VIN-00042", image, "camera")]
    assert watcher.poll(now=5.0) == []  # submitted once, not again while it is queued


def test_rename_convention_and_ignored_names(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    hidden = camera / ".VIN-7.png"
    hidden.write_bytes(b"data")
    (camera / "VIN-8.png.tmp").write_bytes(b"data")
    (camera / "readme.txt").write_text("not an image")
    (camera / "sub.png").mkdir()  # a folder with an image-like name
    for t in (0.0, 1.0, 2.0):
        assert watcher.poll(now=t) == []
    hidden.rename(camera / "VIN-7.png")  # the writer's atomic hand-over
    assert watcher.poll(now=3.0) == []
    assert watcher.poll(now=3.6) == ["VIN-7.png"]
    assert [c[0] for c in recorder.calls] == ["VIN-7"]


def test_done_files_move_to_inspected_and_same_name_again_is_a_new_part(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / "B.png").write_bytes(b"b")
    (camera / "A.png").write_bytes(b"a")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == ["A.png", "B.png"]  # in name order
    recorder.finish_all()
    assert sorted(p.name for p in camera.iterdir()) == [INSPECTED]
    assert sorted(p.name for p in (camera / INSPECTED).iterdir()) == ["A.png", "B.png"]
    # the same part photographed again: inspected again, the first file kept
    (camera / "A.png").write_bytes(b"a again")
    watcher.poll(now=2.0)
    assert watcher.poll(now=3.0) == ["A.png"]
    recorder.finish_all()
    assert sorted(p.name for p in (camera / INSPECTED).iterdir()) == ["A.1.png", "A.png", "B.png"]
    assert len(recorder.calls) == 3


def test_file_not_inspected_stays_for_the_next_start(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / "LATE.png").write_bytes(b"l")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == ["LATE.png"]
    recorder.futures[0].set_exception(RuntimeError("terminal shut down before inspection"))
    assert (camera / "LATE.png").exists()
    assert not (camera / INSPECTED / "LATE.png").exists()


def test_empty_file_waits_longer_then_counts(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder, empty_s=5.0)
    (camera / "EMPTY.png").write_bytes(b"")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == []  # an empty file is usually a camera about to write
    assert watcher.poll(now=5.5) == ["EMPTY.png"]  # still empty: inspect it (it will FAIL)


def test_refused_part_id_does_not_stop_the_others(camera):
    recorder = Recorder(refuse={"BAD"})
    watcher = watcher_for(camera, recorder)
    (camera / "BAD.png").write_bytes(b"x")
    (camera / "GOOD.png").write_bytes(b"y")
    watcher.poll(now=0.0)
    watcher.poll(now=1.0)
    assert [c[0] for c in recorder.calls] == ["GOOD"]


def test_config_and_folder_are_checked(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        FolderWatcher(WatchConfig(tmp_path / "missing"), Recorder())
    with pytest.raises(ValueError, match="settle_s"):
        WatchConfig(tmp_path, settle_s=0)
    with pytest.raises(ValueError, match="poll_s"):
        WatchConfig(tmp_path, poll_s=-1.0)


def test_thread_submits_and_stops(camera):
    recorder = Recorder()
    watcher = FolderWatcher(WatchConfig(camera, poll_s=0.02, settle_s=0.05), recorder).start()
    try:
        (camera / "T-1.png").write_bytes(b"z")
        import time

        deadline = time.monotonic() + 5
        while not recorder.calls and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert [c[0] for c in recorder.calls] == ["T-1"]
    assert not watcher._thread.is_alive()
