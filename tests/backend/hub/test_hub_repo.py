"""Repo names, the destination folder, the Hub listing and the file selection rules."""

from __future__ import annotations

import pytest

from backend import hub
from tests.backend.hub.fake_repos import EXPECTED_MAIN, MAIN, REPO, WEIGHTS


@pytest.mark.parametrize("name, repo_id, branch, folder", [
    ("TheBloke/starcoder-GPTQ", REPO, "main", "TheBloke_starcoder-GPTQ"),
    (" TheBloke/starcoder-GPTQ:v2\n", REPO, "v2", "TheBloke_starcoder-GPTQ_v2"),
    ("https://huggingface.co/TheBloke/starcoder-GPTQ", REPO, "main", "TheBloke_starcoder-GPTQ"),
    ("https://huggingface.co/TheBloke/starcoder-GPTQ/tree/gptq-4bit-32g", REPO, "gptq-4bit-32g",
     "TheBloke_starcoder-GPTQ_gptq-4bit-32g"),
])
def test_parse_repo_accepts_the_three_forms(name, repo_id, branch, folder):
    ref = hub.parse_repo(name)
    assert (ref.repo_id, ref.branch, ref.folder_name) == (repo_id, branch, folder)


@pytest.mark.parametrize("name", [
    "../x", "x/..", "a/b/c", "/etc/passwd", "user", "", "user/mo del", "..\\evil/x", "C:\\models/x",
    "user/model:../../x", "user/model:a/b", "user/model:", "~/model", "https://evil.example/user/model",
    "https://huggingface.co/user/model/resolve/main/x", "https://huggingface.co/../x/tree/main",
])
def test_names_that_could_escape_the_models_folder_are_rejected(server, tmp_path, name):
    with pytest.raises(hub.InvalidRepoNameError, match="user/model|Hugging Face URL"):
        hub.download(name, tmp_path / "models", endpoint=server.url)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["models"])


def test_destination_is_checked_even_for_a_hand_made_ref(tmp_path):
    assert hub.destination(hub.RepoRef(REPO), tmp_path).parent == tmp_path.resolve()
    with pytest.raises(hub.InvalidRepoNameError):
        hub.destination(hub.RepoRef(REPO, "../../../outside"), tmp_path)


def test_list_shows_selected_files_with_sizes_before_downloading(server, tmp_path):
    listing = hub.list_files(REPO, endpoint=server.url)
    assert {f.path for f in listing.files} == EXPECTED_MAIN
    assert {f.path for f in listing.skipped} == {".gitattributes", "pytorch_model.bin", "modeling_custom.py"}
    assert listing.total_size == sum(len(MAIN[n]) for n in EXPECTED_MAIN)
    weights = next(f for f in listing.files if f.path == WEIGHTS)
    assert weights.size == len(MAIN[WEIGHTS]) and len(weights.sha256) == 64
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in server.requests)
    with_code = hub.list_files(REPO, endpoint=server.url, allow_remote_code=True)
    assert "modeling_custom.py" in {f.path for f in with_code.files}


def test_select_files_prefers_safetensors_and_needs_consent_for_pickles():
    names = ["a.safetensors", "b.bin", "config.json", "x.py", "tokenizer.model", "w.h5"]
    assert hub.select_files(names) == ["a.safetensors", "config.json", "tokenizer.model"]
    assert hub.select_files(["b.bin", "c.pt", "config.json"]) == ["config.json"]
    assert hub.select_files(["b.bin", "c.pt"], allow_pickle=True) == ["b.bin", "c.pt"]


def test_two_repos_that_map_to_one_folder_never_overwrite_each_other(tmp_path):
    from backend.hub.metadata import write_metadata
    from backend.hub.repo import destination
    first = hub.parse_repo("a_b/c")
    folder = destination(first, tmp_path)
    folder.mkdir()
    write_metadata(folder, first, "https://huggingface.co", "0" * 40, {})
    assert destination(first, tmp_path) == folder                     # the same repo again: an update
    for other in ("a/b_c", "a_b/c:dev"):
        ref = hub.parse_repo(other)
        if ref.folder_name == folder.name:
            with pytest.raises(hub.InvalidRepoNameError, match="already holds a_b/c"):
                destination(ref, tmp_path)
    assert hub.parse_repo("a/b_c").folder_name == folder.name
