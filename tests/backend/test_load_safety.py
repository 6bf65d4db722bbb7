"""Loading: a failed load keeps the working model when both fit, devices are checked, the estimate counts buffers."""
import pytest

from backend import engine as engine_module
from backend.checkpoint import Checkpoint, ModelLoadError
from backend.engine import Engine
from tests.helpers.checkpoints import tiny_config, write_checkpoint


@pytest.fixture
def engine(tiny_models_dir):
    engine = Engine(tiny_models_dir)
    engine.load("tiny", device="cpu", dtype="float32")
    return engine


def broken_build(*args, **kwargs):
    raise RuntimeError("the weights file is truncated")


def test_a_device_this_machine_lacks_is_named_and_the_model_stays(engine):
    for device in ("cuda:7", "tpu", "cuda:-1", "cpu:0x"):
        with pytest.raises(ModelLoadError, match=f"device '{device}' is not available.*cpu"):
            engine.load("tiny", device=device)
        assert engine.loaded is not None and engine.loaded.device == "cpu"


def test_a_failed_load_keeps_the_old_model_when_both_fit(engine, monkeypatch):
    before = engine.loaded
    monkeypatch.setattr(engine, "room_for", lambda info, device: True)
    monkeypatch.setattr(engine_module, "from_quantized", broken_build)
    with pytest.raises(RuntimeError, match="truncated"):
        engine.load("tiny", device="cpu")
    assert engine.loaded is before


def test_without_room_the_old_model_goes_first_and_the_error_says_so(engine, monkeypatch):
    monkeypatch.setattr(engine, "room_for", lambda info, device: False)
    monkeypatch.setattr(engine_module, "from_quantized", broken_build)
    with pytest.raises(ModelLoadError, match="tiny was unloaded first.*No model is loaded now"):
        engine.load("tiny", device="cpu")
    assert engine.loaded is None


def test_a_successful_load_without_room_reports_the_unload(engine, monkeypatch):
    monkeypatch.setattr(engine, "room_for", lambda info, device: False)
    loaded = engine.load("tiny", device="cpu", dtype="float32")
    assert "tiny was unloaded first" in loaded.note


def test_the_estimate_counts_the_causal_mask(tmp_path):
    write_checkpoint(tmp_path, config=tiny_config(n_positions=3000))
    estimate = Checkpoint.read(tmp_path).estimate
    assert estimate.dense_bytes > 3000 * 3000             # the n_positions² bool mask alone

