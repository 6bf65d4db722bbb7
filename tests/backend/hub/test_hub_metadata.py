"""The metadata file both ways: the hashes `download()` returns are the ones `read_metadata` reads back."""

from __future__ import annotations

import hashlib

from backend import hub
from tests.backend.hub.fake_repos import EXPECTED_MAIN, MAIN, REPO, fetch


def test_download_returns_the_checksums_it_recorded(server, tmp_path):
    result = fetch(server, tmp_path)
    assert dict(result.sha256) == {n: hashlib.sha256(MAIN[n]).hexdigest() for n in EXPECTED_MAIN}
    meta = hub.read_metadata(result.path)
    assert meta is not None and dict(meta.sha256) == dict(result.sha256)
    assert (meta.url, meta.branch, meta.commit) == (f"{server.url}/{REPO}", "main", result.commit)
    assert meta.date.startswith("20")


def test_an_up_to_date_download_returns_the_recorded_checksums(server, tmp_path):
    first = fetch(server, tmp_path)
    again = fetch(server, tmp_path)
    assert again.up_to_date and dict(again.sha256) == dict(first.sha256)


def test_a_specific_file_download_returns_its_own_checksum(server, tmp_path):
    result = fetch(server, tmp_path, specific_files=["config.json"])
    assert dict(result.sha256) == {"config.json": hashlib.sha256(MAIN["config.json"]).hexdigest()}


def test_a_folder_no_download_wrote_has_no_metadata(tmp_path):
    assert hub.read_metadata(tmp_path) is None


def test_a_changed_commit_in_the_metadata_means_download_again(server, tmp_path):
    result = fetch(server, tmp_path)
    path = result.path / hub.METADATA_FILE
    path.write_text(path.read_text().replace(result.commit, "0" * 40))
    assert hub.read_metadata(result.path).commit == "0" * 40
    assert not fetch(server, tmp_path).up_to_date
