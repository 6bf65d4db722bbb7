"""Per-model settings: defaults, saved entries that never leak between models, atomic writes, corrupt files."""
import yaml

import pytest

from backend.settings import DEFAULTS, GenerationParams, Settings, SettingsError


def make(tmp_path, defaults=None):
    settings_file = tmp_path / "settings.yaml"
    if defaults is not None:
        settings_file.write_text(yaml.safe_dump(defaults))
    return Settings.load(settings_file, tmp_path / "models")


def test_defaults_come_from_settings_yaml(tmp_path):
    settings = make(tmp_path, {"temperature": 0.7, "max_new_tokens": 64})
    merged = settings.for_model("any")
    assert merged["temperature"] == 0.7 and merged["max_new_tokens"] == 64
    assert merged["top_p"] == DEFAULTS["top_p"]


def test_saved_settings_return_and_do_not_leak(tmp_path):
    settings = make(tmp_path, {"temperature": 0.2})
    settings.save_for_model("model-a", {"temperature": 0.9, "kernel": "torch", "stop": ("\n\n",), "junk": 1})
    again = make(tmp_path, {"temperature": 0.2})           # a restart reads the file again
    a = again.for_model("model-a")
    assert a["temperature"] == 0.9 and a["kernel"] == "torch" and a["stop"] == ["\n\n"]
    assert "junk" not in again.saved_for("model-a")
    b = again.for_model("model-b")
    assert b["temperature"] == 0.2 and b["kernel"] == "auto"


def test_saving_one_model_keeps_the_others(tmp_path):
    settings = make(tmp_path)
    settings.save_for_model("a", {"top_k": 5})
    settings.save_for_model("b", {"top_k": 9})
    assert settings.saved_for("a") == {"top_k": 5} and settings.saved_for("b") == {"top_k": 9}
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_user_file_is_moved_aside_and_never_overwritten(tmp_path):
    settings = make(tmp_path)
    user = tmp_path / "models" / "config-user.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("a: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML.*moved to config-user.yaml.corrupt-"):
        settings.save_for_model("a", {"top_k": 1})
    kept = list(user.parent.glob("config-user.yaml.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "a: [unclosed\n"
    assert not user.exists()
    settings.save_for_model("a", {"top_k": 1})             # a fresh file after the report
    assert settings.saved_for("a") == {"top_k": 1}


def test_corrupt_user_file_on_read_gives_defaults_and_a_warning(tmp_path):
    settings = make(tmp_path, {"temperature": 0.3})
    user = tmp_path / "models" / "config-user.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("- just\n- a list\n")
    assert settings.for_model("a")["temperature"] == 0.3
    warnings = settings.take_warnings()
    assert len(warnings) == 1 and "holds a list, not a mapping" in warnings[0]


def test_corrupt_settings_yaml_falls_back_to_builtin_defaults(tmp_path):
    (tmp_path / "settings.yaml").write_text("temperature: [\n")
    settings = Settings.load(tmp_path / "settings.yaml", tmp_path / "models")
    assert settings.for_model("x")["temperature"] == DEFAULTS["temperature"]
    assert "not valid YAML" in settings.take_warnings()[0]


# ---------------------------------------------------------------- the one table

def test_settings_yaml_is_the_table_written_out():
    """settings.yaml is generated from the table (python -m backend.settings > settings.yaml)."""
    from pathlib import Path

    from backend.settings import defaults_yaml
    shipped = Path(__file__).resolve().parents[2] / "settings.yaml"
    assert shipped.read_text(encoding="utf-8") == defaults_yaml()
    assert yaml.safe_load(defaults_yaml()) == DEFAULTS


def test_a_bad_saved_value_is_reported_and_the_default_used(tmp_path):
    settings = make(tmp_path)
    settings.user_file.parent.mkdir(parents=True)
    settings.user_file.write_text(yaml.safe_dump({"a": {"temperature": "hot", "top_k": 7}}))
    merged = settings.for_model("a")
    assert merged["temperature"] == DEFAULTS["temperature"] and merged["top_k"] == 7
    assert "temperature must be a number" in settings.take_warnings()[0]


def test_saving_checks_values_first(tmp_path):
    settings = make(tmp_path)
    with pytest.raises(SettingsError, match="top_p must be in"):
        settings.save_for_model("a", {"top_p": 3})
    assert not settings.user_file.exists()


def test_the_model_folder_suggests_its_own_defaults_below_what_was_saved(tmp_path):
    settings = make(tmp_path, {"temperature": 0.5})
    folder = {"temperature": 0.1, "repetition_penalty": 1.2}
    assert settings.for_model("a", folder)["repetition_penalty"] == 1.2
    settings.save_for_model("a", {"temperature": 0.9})
    merged = settings.for_model("a", folder)
    assert merged["temperature"] == 0.9 and merged["repetition_penalty"] == 1.2
    assert settings.for_model("b")["temperature"] == 0.5


# ---------------------------------------------------------------- one reader-writer under load and bad files

def test_two_sessions_saving_at_once_lose_nothing(tmp_path):
    import threading
    settings = make(tmp_path)
    barrier = threading.Barrier(2)

    def session(name):
        barrier.wait()
        for i in range(10):
            settings.save_for_model(f"{name}-{i}", {"top_k": i})
    threads = [threading.Thread(target=session, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = make(tmp_path)
    assert all(again.saved_for(f"{n}-{i}") == {"top_k": i} for n in "ab" for i in range(10))


def test_the_user_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
    from backend.settings import store
    settings = make(tmp_path)
    settings.save_for_model("a", {"top_k": 3})
    parses = []
    real = store._read_yaml
    monkeypatch.setattr(store, "_read_yaml", lambda path: parses.append(path) or real(path))
    for _ in range(5):
        assert settings.for_model("a")["top_k"] == 3
    assert len(parses) == 1
    settings.user_file.write_text(yaml.safe_dump({"a": {"top_k": 4}}) + "\n" * 10)
    assert settings.for_model("a")["top_k"] == 4 and len(parses) == 2


def test_a_corrupt_file_in_a_read_only_folder_gives_defaults_once_and_is_never_overwritten(tmp_path, monkeypatch):
    from pathlib import Path

    from backend.settings import store
    (tmp_path / "settings.yaml").write_text("temperature: [\n")
    user = tmp_path / "models" / "config-user.yaml"
    user.parent.mkdir()
    user.write_text("a: [unclosed\n")

    def read_only(self, target):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Path, "rename", read_only)
    settings = Settings.load(tmp_path / "settings.yaml", tmp_path / "models")     # start-up goes on
    parses = []
    real = store._read_yaml
    monkeypatch.setattr(store, "_read_yaml", lambda path: parses.append(path) or real(path))
    for _ in range(3):
        assert settings.for_model("a")["temperature"] == DEFAULTS["temperature"]
    assert len(parses) == 1
    warnings = settings.take_warnings()
    assert len(warnings) == 2 and all("could not be moved aside" in w for w in warnings)
    with pytest.raises(SettingsError):
        settings.save_for_model("a", {"top_k": 1})
    assert user.read_text() == "a: [unclosed\n"


def test_an_unreadable_settings_file_never_stops_the_app(tmp_path, monkeypatch):
    from pathlib import Path
    (tmp_path / "settings.yaml").write_text("temperature: 0.5\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_text", denied)
    settings = Settings.load(tmp_path / "settings.yaml", tmp_path / "models")
    assert settings.for_model("a")["temperature"] == DEFAULTS["temperature"]
    assert "cannot be read" in settings.take_warnings()[0]


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path):
    settings = make(tmp_path)
    settings.user_file.parent.mkdir(parents=True)
    for text in ("a: [one\n", "a: [two\n"):
        settings.user_file.write_text(text)
        with pytest.raises(SettingsError):
            settings.save_for_model("a", {"top_k": 1})
    kept = sorted(p.read_text() for p in settings.user_file.parent.glob("config-user.yaml.corrupt-*"))
    assert kept == ["a: [one\n", "a: [two\n"]


def test_a_wrong_typed_saved_value_is_dropped_once_with_one_warning(tmp_path):
    settings = make(tmp_path)
    settings.user_file.parent.mkdir(parents=True)
    settings.user_file.write_text(yaml.safe_dump({"a": {"seed": "abc", "max_new_tokens": [1], "top_k": 2}}))
    for _ in range(3):
        merged = settings.for_model("a")
        assert merged["seed"] == DEFAULTS["seed"] and merged["top_k"] == 2
        GenerationParams.from_dict(merged)       # what every API request builds: never fails
    assert len(settings.take_warnings()) == 2
