"""Builds that can never leave a silently wrong folder (issue 9): kills inside file writes resume
byte-identical with nothing stray in the manifest, one builder per folder, stale locks taken
over, the narrow windows around the state folder and the manifest, re-runs that verify; a full
disk or a read-only folder explained in one line (issue 18)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid

import pyarrow.parquet as pq
import pytest
import zarr.storage._local as zarr_local

from dambench.assembly import build, builder, cards, load_config, writers
from dambench.assembly.lock import LOCK_NAME, DambenchBuildError
from dambench.assembly.recipes import make_recipe
from dambench.exceptions import DambenchIntegrityError
from dambench.load import ensure_embedded, open_dataset
from dambench.verify import UnfinishedBuildError, sha256_file, verify


class Killed(BaseException):
    """Stands in for SIGKILL in-process: no ``except Exception`` (zarr's included) catches it."""


def tree_digest(folder):
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted build (the session's era5-sample cache folder) and its digests."""
    folder = ensure_embedded()
    return folder, tree_digest(folder)


@pytest.fixture(scope="module")
def sample_recipe():
    return make_recipe(load_config("era5-sample"))


@pytest.fixture
def fast_recipe(monkeypatch, sample_recipe):
    """The era5-sample recipe made once, so that each resumed attempt costs only its writes."""
    monkeypatch.setattr(builder, "make_recipe", lambda config: sample_recipe)


class Killer:
    """Kills the build at its ``at``-th write of a ``kind`` of file, after writing ``fraction``
    of its bytes to the temporary file the writer uses (zarr's ``*.partial``, dambench's
    ``*.tmp``; a Parquet writer is killed after or before a row group)."""

    def __init__(self, monkeypatch, kind: str, at: int, fraction: float):
        self.target, self.at, self.fraction, self.count, self.kind = kind, at, fraction, 0, None
        put, write_table = zarr_local._put, pq.ParquetWriter.write_table
        atomic_bytes, atomic_text = writers.atomic_write_bytes, cards._atomic_write_text

        def kill_put(path, value, exclusive=False):
            if self.tick("zarr metadata" if path.name == "zarr.json" else "zarr chunk"):
                data = memoryview(value.as_buffer_like()).tobytes()
                self.leave(path.with_suffix(f".{uuid.uuid4().hex}.partial"), data)
            return put(path, value, exclusive)

        def kill_write_table(writer, table, *args, **kwargs):
            if self.tick("parquet row group"):
                if self.fraction >= 0.5:
                    write_table(writer, table, *args, **kwargs)  # this row group, then the kill
                raise Killed
            return write_table(writer, table, *args, **kwargs)

        def kill_bytes(path, data):
            if self.tick(f"json {path.name}"):
                self.leave(path.with_name(path.name + ".tmp"), data)
            return atomic_bytes(path, data)

        def kill_text(path, text):
            if self.tick("card"):
                self.leave(path.with_name(f".{path.name}.x1y2.tmp"), text.encode())
            return atomic_text(path, text)

        monkeypatch.setattr(zarr_local, "_put", kill_put)
        monkeypatch.setattr(pq.ParquetWriter, "write_table", kill_write_table)
        monkeypatch.setattr(writers, "atomic_write_bytes", kill_bytes)
        monkeypatch.setattr(cards, "_atomic_write_text", kill_text)

    def tick(self, kind: str) -> bool:
        self.count += kind == self.target
        if kind == self.target and self.count == self.at:
            self.kind = kind
            return True
        return False

    def leave(self, tmp, data: bytes):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data[: int(len(data) * self.fraction)])
        raise Killed


# one kill per attempt, each resuming the previous one: (kind of write, n-th of the attempt,
# fraction written), through every phase of the build
KILLS = [
    ("json plan.json", 1, 0.5),  # staging the state folder
    ("zarr metadata", 20, 0.3),  # creating the store
    ("zarr chunk", 9, 0.9),  # re-creating it (7 coordinate chunks), then the first shard
    ("zarr chunk", 7, 0.0),  # the second shard
    ("zarr chunk", 8, 1.0),  # a whole chunk in its temporary file, not renamed
    ("parquet row group", 5, 0.6),  # inside the first file
    ("parquet row group", 9, 0.2),  # the first file again, then inside the second
    ("json stats.json", 1, 0.5),
    ("zarr metadata", 1, 0.5),  # the statistics attribute
    ("zarr metadata", 2, 0.5),  # the consolidated metadata
    ("parquet row group", 1, 0.5),  # the preview
    ("card", 1, 0.5),
    ("json manifest.json", 1, 0.5),
]


def test_kills_inside_writes_resume_byte_identical(tmp_path, monkeypatch, reference, fast_recipe):
    folder, digests = reference
    out = tmp_path / "era5-sample"
    for kind, at, fraction in KILLS:
        with monkeypatch.context() as patch:
            killer = Killer(patch, kind, at, fraction)
            with pytest.raises(Killed):
                build("era5-sample", out, verbose=False)
            assert killer.kind == kind, (kind, at)
        with pytest.raises(UnfinishedBuildError, match="resume"):
            open_dataset(out)  # an interrupted build is never read as a dataset
    build("era5-sample", out, verbose=False)
    assert tree_digest(out) == digests
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert not [name for name in listed if name.endswith((".partial", ".tmp"))]


SIGKILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import zarr.storage._local as local
    from dambench.assembly import build

    at, keep = int(sys.argv[2]), int(sys.argv[3])
    put, count = local._put, [0]

    def put_then_die(path, value, exclusive=False):
        count[0] += 1
        if count[0] == at:  # write `keep` bytes of this chunk, flush, then SIGKILL ourselves
            data = memoryview(value.as_buffer_like()).tobytes()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".killed.partial"), "wb") as handle:
                handle.write(data[:keep])
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return put(path, value, exclusive)

    local._put = put_then_die
    build("era5-sample", sys.argv[1], verbose=False)
    """
)


def test_sigkill_inside_chunk_writes_resumes_byte_identical(tmp_path, reference):
    folder, digests = reference
    script = tmp_path / "die.py"
    script.write_text(SIGKILL_SCRIPT)
    out = tmp_path / "era5-sample"
    for at, keep in ((20, 100), (56, 200_000)):  # the store's metadata, then a shard
        run = subprocess.run(
            [sys.executable, str(script), str(out), str(at), str(keep)], capture_output=True
        )
        assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
        assert list(out.rglob("*.partial")) and (out / LOCK_NAME).exists()
    build("era5-sample", out, verbose=False)  # takes over the dead processes' lock
    assert tree_digest(out) == digests


def test_a_second_builder_is_refused_at_every_stage(tmp_path, monkeypatch, reference, fast_recipe):
    folder, digests = reference
    out = tmp_path / "era5-sample"
    refusals = []
    put, write_parquet, count = zarr_local._put, writers.write_parquet_rows, [0]

    def race(where):
        count[0] += 1
        if count[0] % 3 == 0 or where.suffix == ".parquet":  # a second builder now
            with pytest.raises(DambenchBuildError, match=f"being built by PID {os.getpid()}"):
                build("era5-sample", out, verbose=False)
            refusals.append(where)

    def put_and_race(path, value, exclusive=False):
        race(path)
        return put(path, value, exclusive)

    def write_parquet_and_race(path, *args):
        race(path)
        return write_parquet(path, *args)

    monkeypatch.setattr(zarr_local, "_put", put_and_race)
    monkeypatch.setattr(writers, "write_parquet_rows", write_parquet_and_race)
    build("era5-sample", out, verbose=False)
    assert len(refusals) >= 25  # store creation, shards, Parquet, attributes, consolidation
    assert tree_digest(out) == digests and verify(out).ok


def test_two_concurrent_processes_leave_one_verified_folder(tmp_path, reference):
    folder, digests = reference
    command = [sys.executable, "-m", "dambench.cli", "build", "era5-sample", "--quiet", "--out"]
    for offset in (0.0,):  # both at once (the in-process test above races at many stages)
        out = tmp_path / f"race-{offset}"
        first = subprocess.Popen(
            [*command, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            first.wait(timeout=offset)
        except subprocess.TimeoutExpired:
            pass
        second = subprocess.run([*command, str(out)], capture_output=True, text=True)
        stdout, stderr = first.communicate()
        runs = [(first.returncode, stdout.decode(), stderr.decode())]
        runs.append((second.returncode, second.stdout, second.stderr))
        assert [code for code, _, _ in runs].count(0) >= 1
        assert sum("Built" in out_ for _, out_, _ in runs) == 1
        for code, out_, err in runs:
            if code:  # refused at once, one line naming the holder, no traceback
                assert "is being built by PID" in err and "Traceback" not in err
            else:
                assert out_.startswith(("Built", "Verified"))
        assert tree_digest(out) == digests


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    from dambench.assembly.lock import BuildLock

    out = tmp_path / "era5-sample"
    grab = (
        "import os, signal, sys; from dambench.assembly.lock import BuildLock; "
        "BuildLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    run = subprocess.run([sys.executable, "-c", grab, str(out)], capture_output=True)
    assert run.returncode == -signal.SIGKILL
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["pid"] != os.getpid() and holder["host"]
    with caplog.at_level("WARNING"), BuildLock(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(DambenchBuildError, match=f"being built by PID {os.getpid()} on "):
            BuildLock(out).__enter__()  # and it is held again: exclusive
    assert f"stale build lock {out / LOCK_NAME} of PID {holder['pid']}" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released: removed
    # a build over a dead builder's lock: test_sigkill_inside_chunk_writes_resumes_byte_identical


def test_a_kill_between_the_state_folder_and_its_config_resumes(tmp_path, reference, fast_recipe):
    folder, digests = reference
    out = tmp_path / "era5-sample"
    # dambench 0.1 made the state folder, then wrote its config: a kill between left it empty;
    # now the config is staged in .dambench-build.tmp and renamed: a kill leaves the staging
    (out / ".dambench-build").mkdir(parents=True)
    (out / ".dambench-build.tmp").mkdir()
    (out / ".dambench-build.tmp" / "config.json").write_text('{"dig')
    (out / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere", "started": "x"}')
    build("era5-sample", out, verbose=False)
    assert tree_digest(out) == digests


def test_a_kill_after_the_manifest_resumes(tmp_path, monkeypatch, reference, fast_recipe):
    folder, digests = reference
    out = tmp_path / "era5-sample"
    rmtree = shutil.rmtree

    def killed_before_removing_the_state(path, *args, **kwargs):
        if str(path).endswith(builder.STATE_DIR):
            raise Killed
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(builder.shutil, "rmtree", killed_before_removing_the_state)
    with pytest.raises(Killed):
        build("era5-sample", out, verbose=False)
    monkeypatch.setattr(builder.shutil, "rmtree", rmtree)
    assert (out / "manifest.json").exists() and (out / builder.STATE_DIR).exists()
    assert verify(out).ok  # the data are complete; only the marker stayed
    build("era5-sample", out, verbose=False)
    assert tree_digest(out) == digests


def test_a_rerun_verifies_a_finished_folder(tmp_path, reference):
    folder, digests = reference
    out = shutil.copytree(folder, tmp_path / "era5-sample")
    build("era5-sample", out, verbose=False)  # verifies; nothing changes
    assert tree_digest(out) == digests
    shard = out / "era5-sample.zarr" / "background" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100:164] = bytes(64)
    shard.write_bytes(bytes(data))
    with pytest.raises(DambenchIntegrityError, match=r"changed files \['era5-sample.zarr/backg"):
        build("era5-sample", out, verbose=False)


def test_a_stray_file_is_refused_not_listed(tmp_path, monkeypatch, fast_recipe):
    out = tmp_path / "era5-sample"
    write_card = builder._write_card

    def and_a_stray_file(out_, *args):
        (out_ / "data" / "notes.txt").write_text("mine")
        return write_card(out_, *args)

    monkeypatch.setattr(builder, "_write_card", and_a_stray_file)
    with pytest.raises(DambenchBuildError, match=r"unexpected \['data/notes.txt'\]"):
        build("era5-sample", out, verbose=False)
    assert not (out / "manifest.json").exists()


# --- a full disk, a read-only folder (issue 18, item 7) ------------------------------------------


def no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class DiskFull:
    """Raises ENOSPC at the ``at``-th write of a ``kind`` of file, as the writer would, after
    writing part of its temporary file (what a real full disk leaves)."""

    def __init__(self, monkeypatch, kind: str, at: int = 1):
        self.kind, self.at, self.count, self.hit = kind, at, 0, None
        put, write_table = zarr_local._put, pq.ParquetWriter.write_table
        write_bytes = writers.Path.write_bytes

        def put_or_fail(path, value, exclusive=False):
            if self.tick("zarr chunk" if path.name != "zarr.json" else "zarr metadata", path):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".full.partial").write_bytes(b"\0" * 10)
                raise no_space(path)
            return put(path, value, exclusive)

        def write_table_or_fail(writer, table, *args, **kwargs):
            if self.tick("parquet row group", "?"):
                raise OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")
            return write_table(writer, table, *args, **kwargs)

        def write_bytes_or_fail(path, data):
            if self.tick(f"json {path.name.removesuffix('.tmp')}", path):
                write_bytes(path, data[: len(data) // 2])
                raise no_space(path)
            return write_bytes(path, data)

        monkeypatch.setattr(zarr_local, "_put", put_or_fail)
        monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table_or_fail)
        monkeypatch.setattr(writers.Path, "write_bytes", write_bytes_or_fail)

    def tick(self, kind: str, path) -> bool:
        if kind != self.kind:
            return False
        self.count += 1
        if self.count == self.at:
            self.hit = path
            return True
        return False


@pytest.mark.parametrize(
    "kind, at",
    [
        ("zarr metadata", 3),  # creating the store
        ("zarr chunk", 12),  # a shard
        ("parquet row group", 4),
        ("json stats.json", 1),
        ("json manifest.json", 1),
    ],
)
def test_a_full_disk_ends_in_one_line_and_resumes_byte_identical(
    tmp_path, monkeypatch, capsys, reference, fast_recipe, kind, at
):
    from dambench.cli import main

    folder, digests = reference
    out = tmp_path / "era5-sample"
    with monkeypatch.context() as patch:
        full = DiskFull(patch, kind, at)
        with pytest.raises(DambenchBuildError) as caught:
            build("era5-sample", out, verbose=False)
        assert full.hit is not None
        message = str(caught.value)
        assert "\n" not in message and "no space left on the device holding" in message
        assert "Free space there" in message and "resumes" in message
        assert isinstance(caught.value.__cause__, OSError)
        assert not list(out.rglob("*.tmp"))  # dambench's temporary files are removed
        assert not (out / "manifest.json").exists()
        # the command line: one line, no traceback
        full.count = 0
        assert main(["build", "era5-sample", "--quiet", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "dambench build: error: Cannot write" in err and "no space left" in err
    build("era5-sample", out, verbose=False)  # space again: it resumes
    assert tree_digest(out) == digests


@pytest.fixture
def read_only():
    """Makes a folder (recursively) unwritable for real: ``chmod a-w`` for a user, ``chattr +i``
    (immutable) for root, whom permissions do not stop; undone at teardown."""
    folders = []

    def make(folder):
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
        else:
            run = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True)
            if run.returncode != 0:
                pytest.skip(
                    "running as root, where chmod does not stop writes, and chattr +i failed "
                    f"({run.stderr.decode().strip()}); the simulated read-only tests still run"
                )
        folders.append(folder)
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        return folder

    yield make
    for folder in folders:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        else:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)


def test_a_finished_read_only_folder_is_verified_not_crashed(tmp_path, reference, read_only):
    folder, digests = reference
    out = read_only(shutil.copytree(folder, tmp_path / "era5-sample"))
    assert build("era5-sample", out, verbose=False) == out  # verified, nothing written
    assert tree_digest(out) == digests and not (out / LOCK_NAME).exists()


def test_a_changed_file_in_a_read_only_folder_is_still_found(tmp_path, reference, read_only):
    folder, _ = reference
    out = shutil.copytree(folder, tmp_path / "era5-sample")
    stats = out / "stats.json"
    stats.write_text(stats.read_text().replace('"train"', '"trains"'))
    read_only(out)
    with pytest.raises(DambenchIntegrityError, match=r"changed files \['stats.json'\]"):
        build("era5-sample", out, verbose=False)


@pytest.mark.parametrize("where", ["empty folder", "inside a read-only parent"])
def test_a_build_into_a_read_only_folder_ends_in_one_line(tmp_path, capsys, read_only, where):
    from dambench.cli import main

    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "era5-sample"
    if where == "empty folder":
        out.mkdir()
    read_only(parent)
    assert main(["build", "era5-sample", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"Cannot write {out}" in err and "is not writable by this process" in err
    assert "Make it writable" in err


def test_a_read_only_filesystem_is_explained_and_a_finished_one_verified(
    tmp_path, monkeypatch, reference
):
    """The same on a read-only mount (EROFS), simulated: every creation under the folder fails."""
    folder, digests = reference
    out = shutil.copytree(folder, tmp_path / "era5-sample")
    empty = tmp_path / "empty"
    empty.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_read_only(path, flags, *args, **kwargs):
        if str(path).startswith((str(out), str(empty))) and flags & (os.O_WRONLY | os.O_RDWR):
            raise refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir_read_only(path, *args, **kwargs):
        if str(path).startswith((str(out), str(empty))):
            raise refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_read_only)
    monkeypatch.setattr(os, "mkdir", mkdir_read_only)
    assert build("era5-sample", out, verbose=False) == out
    assert tree_digest(out) == digests
    with pytest.raises(DambenchBuildError, match="the filesystem is read-only") as caught:
        build("era5-sample", empty, verbose=False)
    assert f"Cannot write {empty / LOCK_NAME}" in str(caught.value)
    assert list(empty.iterdir()) == []


# --- a shard that fails (issue 16, item 3) -------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_shard_names_its_cycles_and_the_cause_and_resumes(
    tmp_path, monkeypatch, reference, sample_recipe, fast_recipe, workers
):
    from dambench.exceptions import DambenchRemoteError

    folder, digests = reference
    out = tmp_path / "era5-sample"
    url = "https://data.example.org/era5.zarr/2m_temperature/c/8/0/0"
    block = sample_recipe.block

    def source_fails_at_the_second_shard(indices):
        if indices[0] == 8:
            raise DambenchRemoteError(f"Could not read {url}: connection reset (tried 5 times).")
        return block(indices)

    monkeypatch.setattr(sample_recipe, "block", source_fails_at_the_second_shard)
    with pytest.raises(DambenchBuildError) as caught:
        build("era5-sample", out, workers=workers, verbose=False)
    cycles = sample_recipe.cycles
    message = str(caught.value)
    assert "\n" not in message
    assert f"shard of cycles {cycles[8]} .. {cycles[15]} (8 cycles) failed" in message
    assert f"DambenchRemoteError: Could not read {url}" in message and "resumes" in message
    assert isinstance(caught.value.__cause__, DambenchRemoteError)
    done = sorted(p.name for p in (out / builder.STATE_DIR / "shards").iterdir())
    assert "00000008" not in done and "00000000" in done
    monkeypatch.setattr(sample_recipe, "block", block)
    build("era5-sample", out, verbose=False)
    assert tree_digest(out) == digests
