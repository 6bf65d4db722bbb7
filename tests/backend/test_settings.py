"""Per-model settings: defaults, saved entries that never leak between models, atomic writes, corrupt files."""
import yaml

import pytest

from backend.settings import DEFAULTS, Settings, SettingsError


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
