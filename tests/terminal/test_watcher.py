"""The camera folder: half-written files are not taken, each image is submitted once, with its
stem as the part id, and moved into inspected/ when done. Polls are driven by hand with an
explicit clock, so the tests neither sleep nor race."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import pytest

from autoweld.terminal.watcher import (
    FAILED,
    INSPECTED,
    INVALID_NAME_PREFIX,
    FolderWatcher,
    WatchConfig,
    is_candidate,
    is_ignored,
    part_id_for,
)


class Recorder:
    """Stands in for Station.submit; completes futures when told to."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Path, str]] = []
        self.errors: dict[str, str] = {}
        self.futures: list[Future] = []
        self.refuse = refuse or set()

    def __call__(
        self, part_id: str, *, path: Path, source: str, error: str | None = None
    ) -> Future:
        if part_id in self.refuse:
            raise ValueError(f"part_id refused: {part_id}")
        self.calls.append((part_id, path, source))
        if error is not None:
            self.errors[part_id] = error
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
    (folder / FAILED).mkdir(exist_ok=True)
    return watcher


def test_candidates():
    assert is_candidate("VIN-1.png") and is_candidate("a.JPG") and is_candidate("x.bmp")
    for name in (".VIN-1.png", "VIN-1.png.tmp", "VIN-1.png.part", "notes.txt", "VIN", ".png"):
        assert not is_candidate(name), name
    for name in (".VIN-1.png", "VIN-1.png.tmp", "VIN-1.png.part", "x.partial", ".png"):
        assert is_ignored(name), name
    for name in ("notes.txt", "VIN", "VIN-1.gif", "VIN-1.png"):
        assert not is_ignored(name), name


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
    (camera / "VIN-9.png.part").write_bytes(b"data")
    for t in (0.0, 1.0, 2.0):
        assert watcher.poll(now=t) == []  # hidden and temporary names: ignored until renamed
    hidden.rename(camera / "VIN-7.png")  # the writer's atomic hand-over
    assert watcher.poll(now=3.0) == []
    assert watcher.poll(now=3.6) == ["VIN-7.png"]
    assert [c[0] for c in recorder.calls] == ["VIN-7"]
    assert recorder.errors == {}


def _make(camera: Path, kind: str, tmp_path: Path) -> str:
    if kind == "gif":
        (camera / "VIN-G.gif").write_bytes(b"GIF89a")
        return "VIN-G.gif"
    if kind == "txt":
        (camera / "readme.txt").write_text("not an image")
        return "readme.txt"
    if kind == "directory":
        (camera / "VIN-D.png").mkdir()  # a folder with an image-like name
        return "VIN-D.png"
    if kind == "fifo":
        os.mkfifo(camera / "VIN-F.png")
        return "VIN-F.png"
    if kind == "symlink":
        real = tmp_path / "elsewhere.png"
        real.write_bytes(b"a real image elsewhere")
        (camera / "VIN-S.png").symlink_to(real)
        return "VIN-S.png"
    if kind == "dangling":
        (camera / "VIN-X.png").symlink_to(tmp_path / "missing.png")
        return "VIN-X.png"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("gif", "unsupported file type '.gif'"),
        ("txt", "unsupported file type '.txt'"),
        ("directory", "is a directory"),
        ("fifo", "FIFO"),
        ("symlink", "symbolic link (not followed)"),
        ("dangling", "symbolic link (not followed)"),
    ],
)
def test_entry_that_cannot_be_inspected_is_a_failure_moved_to_failed(camera, tmp_path, kind, says):
    """Issue 15 item 4: these were skipped silently (no record, no FAIL, no alarm). Each is now
    submitted as a FAIL with the reason (never opened: a FIFO cannot hang the poll) and the entry
    itself, not what a link points at, is moved into failed/."""
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    name = _make(camera, kind, tmp_path)
    assert watcher.poll(now=0.0) == []
    assert watcher.poll(now=1.0) == [name]
    [(part_id, path, source)] = recorder.calls
    assert path == camera / name and source == "camera"
    error = recorder.errors[part_id]
    assert says in error and name in error and "not inspected" in error
    assert watcher.poll(now=2.0) == []  # submitted once
    recorder.finish_all()
    assert sorted(p.name for p in camera.iterdir()) == [FAILED, INSPECTED]
    moved = camera / FAILED / name
    assert os.path.lexists(moved) and not list((camera / INSPECTED).iterdir())
    if kind == "symlink":
        assert moved.is_symlink() and (tmp_path / "elsewhere.png").read_bytes().startswith(b"a ")
    assert watcher.poll(now=3.0) == [] and len(recorder.calls) == 1


def test_failed_name_clash_gets_a_unique_suffix_and_links_are_not_followed(camera, tmp_path):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / FAILED / "VIN-G.gif").symlink_to(tmp_path / "nowhere")  # dangling, still a clash
    (camera / "VIN-G.gif").write_bytes(b"GIF89a")
    watcher.poll(now=0.0)
    watcher.poll(now=1.0)
    recorder.finish_all()
    assert sorted(p.name for p in (camera / FAILED).iterdir()) == ["VIN-G.1.gif", "VIN-G.gif"]
    assert (camera / FAILED / "VIN-G.1.gif").read_bytes() == b"GIF89a"


def test_entry_that_vanishes_before_it_is_taken_is_a_failure(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / "VIN-V.png").write_bytes(b"x")
    assert watcher.poll(now=0.0) == []
    (camera / "VIN-V.png").unlink()
    assert watcher.poll(now=1.0) == ["VIN-V.png"]
    assert "vanished" in recorder.errors["VIN-V"]
    recorder.finish_all()
    assert watcher.poll(now=2.0) == []


def test_image_whose_inspection_ended_in_an_error_goes_to_failed(camera):
    class Result:
        def __init__(self, error):
            self.error = error

    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / "OK.png").write_bytes(b"a")
    (camera / "BAD.png").write_bytes(b"b")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == ["BAD.png", "OK.png"]
    recorder.futures[0].set_result(Result("BAD.png: cannot be read (Permission denied)"))
    recorder.futures[1].set_result(Result(None))
    assert [p.name for p in (camera / FAILED).iterdir()] == ["BAD.png"]
    assert [p.name for p in (camera / INSPECTED).iterdir()] == ["OK.png"]


def test_start_creates_both_subfolders_and_never_submits_them(camera):
    recorder = Recorder()
    watcher = FolderWatcher(WatchConfig(camera, poll_s=10.0), recorder)
    watcher.start()
    watcher.stop()
    assert (camera / INSPECTED).is_dir() and (camera / FAILED).is_dir()
    assert watcher.poll(now=0.0) == [] and watcher.poll(now=5.0) == []
    assert recorder.calls == []


def test_done_files_move_to_inspected_and_same_name_again_is_a_new_part(camera):
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / "B.png").write_bytes(b"b")
    (camera / "A.png").write_bytes(b"a")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == ["A.png", "B.png"]  # in name order
    recorder.finish_all()
    assert sorted(p.name for p in camera.iterdir()) == [FAILED, INSPECTED]
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


@pytest.mark.parametrize("stem", ["V" * 230, "VIN\x07BELL", "VIN\tTAB"])
def test_file_name_that_is_no_part_id_is_submitted_as_a_failure(camera, stem):
    """Not dropped: submitted under a placeholder id, with the reason, so it is a recorded FAIL."""
    recorder = Recorder()
    watcher = watcher_for(camera, recorder)
    (camera / f"{stem}.png").write_bytes(b"x")
    watcher.poll(now=0.0)
    assert watcher.poll(now=1.0) == [f"{stem}.png"]
    [(part_id, path, source)] = recorder.calls
    assert part_id.startswith(INVALID_NAME_PREFIX) and path == camera / f"{stem}.png"
    assert len(part_id) <= 200 and part_id.isprintable()
    error = recorder.errors[part_id]
    assert "not a valid part id" in error and part_id in error
    recorder.finish_all()
    assert (camera / FAILED / f"{stem}.png").exists()  # recorded, not inspected: failed/


def test_valid_names_get_no_error():
    assert part_id_for("VIN-00042.png") == ("VIN-00042", None)
    first, second = part_id_for("A" * 230 + ".png"), part_id_for("A" * 231 + ".png")
    assert first[0] != second[0]  # distinct files get distinct placeholders
