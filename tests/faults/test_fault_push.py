"""``zoo push`` with links and special files: links leaving the folder are refused, nothing is uploaded
and the pushed folder is never modified (the card is rendered into a staging copy)."""

from __future__ import annotations

import os
import threading
import uuid

import pytest
from faultkit import one_line_error, run_console

from zoo import hub
from zoo.hub import ZooPushError


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if not p.is_fifo()
    }


def _posts(server) -> int:
    return sum(1 for method, _ in server.log if method == "POST")


@pytest.fixture
def repo() -> str:
    return f"faults-{uuid.uuid4().hex[:8]}/pushed"


def test_link_to_an_outside_file_is_refused(hub_server, model_folder, tmp_path, repo):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside content")
    (model_folder / "notes.txt").symlink_to(secret)
    before, posts = _snapshot(model_folder), _posts(hub_server)
    with pytest.raises(ZooPushError, match=r"notes\.txt: a link to .*secret\.txt, outside the folder"):
        hub.push_folder(model_folder, repo)
    assert _snapshot(model_folder) == before
    (model_folder / "notes.txt").unlink()
    before = _snapshot(model_folder)
    (model_folder / "data").symlink_to(tmp_path, target_is_directory=True)  # a linked folder, too
    with pytest.raises(ZooPushError, match=r"data: a link to .*, outside the folder"):
        hub.push_folder(model_folder, repo)
    (model_folder / "data").unlink()
    (model_folder / "broken").symlink_to(tmp_path / "gone")
    with pytest.raises(ZooPushError, match="broken link"):
        hub.push_folder(model_folder, repo)
    (model_folder / "broken").unlink()
    assert _posts(hub_server) == posts and not hub_server.store.exists(repo)
    assert _snapshot(model_folder) == before
    proc = run_console("zoo", ["push", str(model_folder), repo])
    assert proc.returncode == 0, proc.stderr  # the clean folder pushes
    (model_folder / "notes.txt").symlink_to(secret)
    proc = run_console("zoo", ["push", str(model_folder), repo])
    assert "outside the folder" in one_line_error(proc, "zoo push: error:")


def test_links_inside_the_folder_are_followed_once(hub_server, model_folder, repo):
    (model_folder / "extra").mkdir()
    (model_folder / "extra" / "classes.json").write_text('{"tumour": ["dark"]}')
    (model_folder / "classes-link.json").symlink_to(model_folder / "extra" / "classes.json")
    (model_folder / "extra" / "loop").symlink_to(model_folder, target_is_directory=True)  # a cycle
    (model_folder / ".hidden.tmp").write_text("temp")
    files = hub.folder_files(model_folder)
    assert "classes-link.json" in files and "extra/classes.json" in files
    assert not any(f.startswith(".") or "/." in f for f in files)
    assert not any(f.startswith("extra/loop/") for f in files)  # each real folder once
    hub.push_folder(model_folder, repo)
    pulled = hub.pull(repo)
    assert (pulled / "classes-link.json").read_text() == '{"tumour": ["dark"]}'
    assert not (pulled / ".hidden.tmp").exists()


def test_fifo_is_refused_without_blocking(hub_server, model_folder, repo):
    os.mkfifo(model_folder / "pipe")
    done = threading.Event()
    errors: list[BaseException] = []

    def push() -> None:
        try:
            hub.push_folder(model_folder, repo)
        except BaseException as e:
            errors.append(e)
        done.set()

    threading.Thread(target=push, daemon=True).start()
    assert done.wait(30), "push blocked on a FIFO"
    assert isinstance(errors[0], ZooPushError) and "not a regular file" in str(errors[0])


def test_push_never_edits_the_source_folder(hub_server, model_folder, repo):
    before = _snapshot(model_folder)
    card = (model_folder / "README.md").read_text()
    assert f'zoo.load("{repo}")' not in card
    hub.push_folder(model_folder, repo)
    assert _snapshot(model_folder) == before  # the card for the repo lives only in the pushed copy
    assert f'zoo.load("{repo}")' in (hub.pull(repo) / "README.md").read_text()
    # a failing push (invalid card metadata on the server) leaves it untouched too
    (model_folder / "README.md").write_text("---\ntags: [unclosed\n---\n")
    (model_folder / "card.json").unlink()  # keep the hand-written card
    before = _snapshot(model_folder)
    with pytest.raises(ValueError, match="Invalid metadata"):
        hub.push_folder(model_folder, repo)
    assert _snapshot(model_folder) == before
