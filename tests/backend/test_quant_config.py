"""quantize_config.json / config.json's quantization_config: what is accepted and what each bad value says."""
import json
import shutil
from pathlib import Path

import pytest

from backend.quant_config import QuantConfig, QuantConfigError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "starcoder-gptq"
WILD_KEYS = {"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": True, "static_groups": False,
             "sym": True, "true_sequential": True, "model_name_or_path": "x", "model_file_base_name": "model",
             "quant_method": "gptq", "checkpoint_format": "gptq_v2", "is_marlin_format": False, "lm_head": False,
             "pack_dtype": "int32", "meta": {"quantizer": ["gptqmodel:1.0"]}, "brand_new_key": [1, 2]}


def write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_thebloke_quantize_config(tmp_path):
    write(tmp_path, "quantize_config.json", {"bits": 4, "group_size": -1, "damp_percent": 0.01, "desc_act": True,
                                             "sym": True, "true_sequential": True, "model_name_or_path": None,
                                             "model_file_base_name": "model"})
    cfg = QuantConfig.from_dir(tmp_path)
    assert (cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym) == (4, -1, True, True)
    assert cfg.checkpoint_format == "gptq" and cfg.zero_offset == 1
    assert cfg.model_file_base_name == "model"


def test_falls_back_to_config_json_block(tmp_path):
    write(tmp_path, "config.json", {"model_type": "gpt_bigcode",
                                    "quantization_config": {"bits": 8, "group_size": 32, "quant_method": "gptq"}})
    cfg = QuantConfig.from_dir(tmp_path)
    assert (cfg.bits, cfg.group_size) == (8, 32)
    assert "quantization_config" in cfg.source


def test_every_key_seen_in_the_wild_is_accepted(tmp_path):
    write(tmp_path, "quantize_config.json", WILD_KEYS)
    cfg = QuantConfig.from_dir(tmp_path)
    assert cfg.checkpoint_format == "gptq_v2" and cfg.zero_offset == 0 and cfg.group_size == 128


@pytest.mark.parametrize("key,value,expect", [
    ("bits", 5, "'bits' is 5"), ("bits", "4", "'bits' is '4'"), ("group_size", 0, "'group_size' is 0"),
    ("group_size", -2, "'group_size' is -2"), ("desc_act", "yes", "'desc_act' is 'yes'"),
    ("sym", 1, "'sym' is 1"), ("checkpoint_format", "marlin", "'checkpoint_format' is 'marlin'"),
    ("quant_method", "awq", "'quant_method' is 'awq'"), ("is_marlin_format", True, "Marlin"),
])
def test_bad_values_name_file_key_value_and_fix(tmp_path, key, value, expect):
    path = write(tmp_path, "quantize_config.json", {"bits": 4, "group_size": -1, key: value})
    with pytest.raises(QuantConfigError) as err:
        QuantConfig.from_dir(tmp_path)
    message = str(err.value)
    assert str(path) in message and expect in message
    assert any(word in message for word in ("use", "supported", "only"))


def test_missing_bits_says_what_to_add(tmp_path):
    write(tmp_path, "quantize_config.json", {"group_size": -1})
    with pytest.raises(QuantConfigError, match="'bits' is missing"):
        QuantConfig.from_dir(tmp_path)


def test_corrupt_json_is_reported(tmp_path):
    write(tmp_path, "quantize_config.json", '{"bits": 4,')
    with pytest.raises(QuantConfigError, match="not valid JSON.*re-download"):
        QuantConfig.from_dir(tmp_path)


def test_folder_without_any_quant_config(tmp_path):
    write(tmp_path, "config.json", {"model_type": "gpt_bigcode"})
    with pytest.raises(QuantConfigError, match="not a GPTQ model folder"):
        QuantConfig.from_dir(tmp_path)


def test_group_size_must_divide_the_layer():
    cfg = QuantConfig(bits=4, group_size=100, source="q.json")
    with pytest.raises(QuantConfigError, match="does not divide layer x's 6144"):
        cfg.check_layer("x", 6144)


def test_real_fixture_files_agree(tmp_path):
    for name in ("quantize_config.json", "config.json"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    direct = QuantConfig.from_dir(tmp_path)
    (tmp_path / "quantize_config.json").unlink()
    embedded = QuantConfig.from_dir(tmp_path)
    assert dict(direct.to_dict()) == dict(embedded.to_dict())
    assert (direct.bits, direct.group_size, direct.desc_act, direct.sym) == (4, -1, True, True)
