"""The Engine on real (tiny and demo) models: names, inspect, load, stream, queueing, unload mid-generation."""
import json
import shutil
import threading
import time

import pytest

from backend import prompts
from backend.engine import Engine, NoModelLoaded
from backend.generate import GenerationError, GenerationParams
from backend.loader import ModelLoadError
from backend.quant_config import QuantConfigError


@pytest.fixture
def engine(tiny_models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    shutil.copytree(root / "tiny", root / "tiny2")
    (root / ".downloads" / "partial").mkdir(parents=True)
    (root / "partial").mkdir()                         # no config.json: not a model
    return Engine(root)


def text_of(chunks):
    chunks = list(chunks)
    return "".join(c.text for c in chunks), chunks[-1]


def test_lists_only_complete_model_folders(engine):
    assert engine.list_models() == ["tiny", "tiny2"]


@pytest.mark.parametrize("name", ["../tiny", "tiny/../../etc", "/etc", ".downloads", "", "a/b", "..", "tiny\x00"])
def test_names_never_escape_the_models_folder(engine, name):
    with pytest.raises(ModelLoadError, match="not a valid model name|outside the models folder"):
        engine.model_path(name)


def test_unknown_model_lists_the_available_ones(engine):
    with pytest.raises(ModelLoadError, match="no model folder 'nope'.*Available: tiny, tiny2"):
        engine.inspect("nope")


def test_inspect_reads_without_loading(engine):
    info = engine.inspect("tiny")
    summary = info.summary()
    assert summary["bits"] == 4 and summary["group_size"] == -1 and summary["weights_file"] == "model.safetensors"
    assert info.estimate_bytes > 0 and engine.loaded is None


def test_generation_needs_a_model(engine):
    with pytest.raises(NoModelLoaded, match="no model is loaded"):
        list(engine.complete("x", GenerationParams()))


def test_load_and_stream(engine):
    loaded = engine.load("tiny", dtype="float32")
    assert set(loaded.kernels) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert loaded.memory_bytes > 0 and loaded.device == "cpu"
    params = GenerationParams(max_new_tokens=8, temperature=0.9, seed=11)
    first, last = text_of(engine.complete("def f(x):", params))
    second, _ = text_of(engine.complete("def f(x):", params))
    assert first == second and last.completion_tokens + (last.finish_reason == "eos") >= 1
    with pytest.raises(GenerationError, match="prompt is empty"):
        list(engine.complete("", params))


def test_long_prompt_is_truncated_and_reported(engine):
    engine.load("tiny", dtype="float32")
    _, last = text_of(engine.complete("x = 1\n" * 200, GenerationParams(max_new_tokens=4, temperature=0)))
    assert last.truncated_tokens > 0 and last.prompt_tokens == 64 - 4


def test_two_requests_queue_and_both_finish(engine):
    engine.load("tiny", dtype="float32")
    results = {}

    def worker(key):
        results[key] = text_of(engine.complete("def", GenerationParams(max_new_tokens=10, temperature=0)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"][0] == results["b"][0] and results["a"][1].finish_reason in ("length", "eos")


def test_unload_during_generation_cancels_it(engine):
    engine.load("tiny", dtype="float32")
    started, done = threading.Event(), {}

    def worker():
        chunks = []
        for chunk in engine.complete("def", GenerationParams(max_new_tokens=55, temperature=1.0, seed=1)):
            chunks.append(chunk)
            started.set()
            time.sleep(0.01)
        done["last"] = chunks[-1]

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(30)
    engine.unload()
    thread.join(30)
    assert done["last"].finish_reason == "cancelled" and engine.loaded is None
    with pytest.raises(NoModelLoaded):
        list(engine.complete("x", GenerationParams()))


def test_switching_models_then_failed_load_keeps_engine_usable(engine):
    engine.load("tiny", dtype="float32")
    engine.load("tiny2", dtype="float32")
    assert engine.loaded.name == "tiny2"
    (engine.models_dir / "tiny" / "quantize_config.json").write_text('{"bits": 5}')
    with pytest.raises(QuantConfigError, match="'bits' is 5"):
        engine.load("tiny")
    assert engine.loaded.name == "tiny2"     # the configs are checked before the old model is dropped
    text, _ = text_of(engine.complete("def", GenerationParams(max_new_tokens=3, temperature=0)))
    assert isinstance(text, str)


def test_chat_renders_the_dialogue_and_stops_at_the_next_human_turn(engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sort a list?"}]
    prompt = prompts.render_dialogue(messages)
    assert prompt.startswith(prompts.DEFAULT_PREAMBLE.rstrip("\n"))
    assert prompt.endswith("Be brief.\n-----\nHuman: Hi\nAssistant: Hello.\nHuman: Sort a list?\nAssistant:")
    assert prompts.render_dialogue([{"role": "user", "content": "x"}], preamble="") == "Human: x\nAssistant:"
    engine.load("tiny", dtype="float32")
    text, last = text_of(engine.chat(messages, GenerationParams(max_new_tokens=20, temperature=1.0, seed=2)))
    assert "\nHuman:" not in text


def test_demo_model_writes_python(demo_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(demo_dir, root / "starcoder-demo")     # a symlink leading out of models/ is refused
    engine = Engine(root)
    engine.load("starcoder-demo", dtype="float32")
    # greedy with the repetition penalty the model ships (what the app serves it with): without one, a
    # model this small loops on a line or a digit
    penalty = json.loads((demo_dir / "generation_config.json").read_text())["repetition_penalty"]
    greedy = GenerationParams(max_new_tokens=48, temperature=0, repetition_penalty=penalty)
    text, _ = text_of(engine.complete("def fibonacci(n):", greedy))
    assert text.strip() and any(word in text for word in ("return", "if ", "for ", "self", "=")), text
    lines = [line.rstrip() for line in text.strip().split("\n")]
    assert not any(a == b == c for a, b, c in zip(lines, lines[1:], lines[2:])), text
    middle, last = text_of(engine.infill("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", greedy))
    assert last.finish_reason in ("eos", "length") and "<fim_middle>" not in middle


def test_loads_and_generations_run_on_one_compute_thread(tiny_models_dir, monkeypatch):
    # OpenMP pools (CPU) and CUDA graphs (GPU) belong to a thread: a request on a fresh thread must not
    # compute there, it hands the work to the thread that loaded the model
    import backend.engine as engine_module
    threads = {"load": set(), "forward": set()}
    real = engine_module.from_quantized

    def recording(*args, **kwargs):
        threads["load"].add(threading.get_ident())
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda *_: threads["forward"].add(threading.get_ident()))
        return model

    monkeypatch.setattr(engine_module, "from_quantized", recording)
    engine = Engine(tiny_models_dir)
    engine.load("tiny", compile="off")
    params = GenerationParams(max_new_tokens=3, temperature=0)
    texts = []

    def ask():
        texts.append("".join(c.text for c in engine.complete("def f(x):", params)))

    for _ in range(3):
        worker = threading.Thread(target=ask)
        worker.start()
        worker.join()
    ask()
    assert len(texts) == 4 and len(set(texts)) == 1
    assert len(threads["load"]) == 1 and threads["forward"] == threads["load"]
    assert threading.get_ident() not in threads["load"]


def test_a_consumer_that_stops_early_cancels_the_generation(tiny_models_dir):
    engine = Engine(tiny_models_dir)
    engine.load("tiny", compile="off")
    cancel = threading.Event()
    stream = engine.complete("def f(x):", GenerationParams(max_new_tokens=40, temperature=0, stop=("\x00",)), cancel)
    next(stream)
    stream.close()                      # what a client that went away does
    assert cancel.is_set()
    # the engine is free again at once: the producer saw the cancel within one token
    chunks = list(engine.complete("def f(x):", GenerationParams(max_new_tokens=2, temperature=0)))
    assert chunks[-1].completion_tokens >= 1


def test_a_generation_that_ends_by_itself_is_not_marked_cancelled():
    # the producer's job finishes a moment after its last item: that moment must not read as a consumer
    # that left early (which sets the caller's cancel event)
    from concurrent.futures import Future

    from backend.compute import ComputeThread
    compute = ComputeThread()

    def late_submit(fn, *args):
        future = Future()

        def run():
            fn(*args)
            time.sleep(0.2)
            future.set_result(None)
        threading.Thread(target=run).start()
        return future

    compute.submit = late_submit
    cancel = threading.Event()
    assert list(compute.iterate(lambda: iter([1, 2, 3]), cancel)) == [1, 2, 3]
    assert not cancel.is_set()
    stopped = compute.iterate(lambda: iter(range(10)), cancel)
    assert next(stopped) == 0
    stopped.close()
    assert cancel.is_set()
