"""UI handlers against a real Engine: model selection and loading, generation modes, Stop, settings."""
from __future__ import annotations

import threading

from backend.prompts import DEFAULT_PREAMBLE
from backend.settings import DEFAULTS, GENERATION_KEYS, Settings
from tests.helpers.models import BROKEN_NAME, DEMO_NAME, SECOND_NAME
from ui.generation_tab import GAP_MARKER, GAP_SPLIT, GenerationHandlers, split_fill
from ui.model_tab import ModelHandlers
from ui.params import format_stops, generation_params, panel_values, parse_stops, values_from_panel


def panel(**overrides) -> list:
    values = dict(DEFAULTS, **overrides)
    return panel_values(values)


def last(iterator):
    item = None
    for item in iterator:
        pass
    return item


# ---------------------------------------------------------------- parameters panel

def test_stop_strings_round_trip_through_the_textbox():
    stops = ["\n\n", "###", "a\\b", "\tx"]
    assert parse_stops(format_stops(stops)) == stops
    assert format_stops(["\nHuman:"]) == "\\nHuman:"


def test_panel_values_become_generation_params():
    values = values_from_panel(panel(temperature=0.7, max_new_tokens=9, stop=["\n"]))
    assert values["temperature"] == 0.7 and values["max_new_tokens"] == 9 and values["stop"] == ["\n"]
    params = generation_params(panel(top_k=5.0, seed=3.0))
    assert params.top_k == 5 and isinstance(params.top_k, int) and params.seed == 3
    assert list(panel()) == list(GENERATION_KEYS)


# ---------------------------------------------------------------- model tab

def test_info_shows_quant_config_and_kernels_of_the_loaded_model(engine, settings):
    text = ModelHandlers(engine, settings).info(DEMO_NAME)
    for word in ("bits", "group_size", "desc_act", "sym", "weights_file", "memory estimate",
                 "attn.c_attn", "mlp.c_proj", "memory used"):
        assert word in text


def test_selecting_a_model_gives_its_saved_settings_and_others_get_the_defaults(engine, settings):
    handlers = ModelHandlers(engine, settings)
    saved = panel(temperature=1.3, max_new_tokens=77, stop=["\n\n"])
    status = handlers.save(DEMO_NAME, "torch", "cpu", "float32", "fim", "spm", DEFAULT_PREAMBLE, saved)["status"]
    assert "Saved" in status
    first = handlers.select(DEMO_NAME, autoload=False)
    assert (first["kernel"], first["device"], first["dtype"]) == ("torch", "cpu", "float32")
    assert first["temperature"] == 1.3
    assert first["stop"] == "\\n\\n"
    assert (first["mode"], first["fim_order"], first["assistant_preamble"]) == ("fim", "spm", DEFAULT_PREAMBLE)
    second = handlers.select(SECOND_NAME, autoload=False)
    assert [second[k] for k in ("kernel", "device", "dtype")] == [settings.defaults[k] for k in ("kernel", "device", "dtype")]
    assert second["temperature"] == settings.defaults["temperature"]
    assert second["mode"] == settings.defaults["mode"]
    # a restart reads the same file
    again = Settings.load(None, settings.user_file.parent).for_model(DEMO_NAME)
    assert again["temperature"] == 1.3 and again["mode"] == "fim" and again["kernel"] == "torch"
    # the default preamble is not copied into the file
    assert "assistant_preamble" not in Settings.load(None, settings.user_file.parent).saved_for(DEMO_NAME)


def test_a_corrupt_settings_file_is_reported_and_kept(engine, settings):
    settings.user_file.write_text("model: [unclosed\n")
    handlers = ModelHandlers(engine, settings)
    result = handlers.select(DEMO_NAME, autoload=False)
    assert "Settings warning" in result["status"] and "moved" in result["status"]
    assert result["temperature"] == settings.defaults["temperature"]
    assert list(settings.user_file.parent.glob("config-user.yaml.corrupt-*"))


def test_a_broken_model_fails_with_a_reason_and_the_app_loads_another(models_dir, settings):
    from backend.engine import Engine
    engine = Engine(models_dir)
    handlers = ModelHandlers(engine, settings)
    assert "cannot be read" in handlers.info(BROKEN_NAME)
    status = last(handlers.load(BROKEN_NAME, "auto", "cpu", "auto"))["status"]
    assert "Failed" in status and BROKEN_NAME in status and engine.loaded is None
    shown = last(handlers.load(SECOND_NAME, "auto", "cpu", "auto"))
    status, info = shown["status"], shown["info"]
    assert status.startswith("Loaded") and engine.loaded.name == SECOND_NAME and "memory used" in info
    message = handlers.unload(SECOND_NAME)["status"]
    assert "Unloaded" in message and engine.loaded is None


# ---------------------------------------------------------------- generation

def test_completion_streams_with_counts(engine):
    outputs = list(GenerationHandlers(engine, update_s=0).complete("def add(a, b):\n", None,
                                                      panel(max_new_tokens=12, seed=1)))
    assert len(outputs) >= 3
    status = outputs[-1]["status"]
    assert "finished" in status and "prompt" in status and "tokens/s" in status
    growing = [out["output"] for out in outputs[1:]]
    assert all(growing[i + 1].startswith(growing[i]) for i in range(len(growing) - 1))


def test_continue_appends_to_the_output(engine):
    out = last(GenerationHandlers(engine, update_s=0).continue_("x = ", "1", None, panel(max_new_tokens=4, seed=2)))
    assert out["output"].startswith("1")


def test_stop_ends_generation_within_one_token(engine):
    flag = threading.Event()
    stream = GenerationHandlers(engine, update_s=0).complete("def f():\n", flag,
                                                  panel(max_new_tokens=400, temperature=1.0, seed=5))
    next(stream)            # the waiting line
    text_at_stop = next(stream)["output"]
    flag.set()
    rest = list(stream)
    assert len(rest) <= 2   # at most the token in flight, then the final chunk
    final_text, status = rest[-1]["output"], rest[-1]["status"]
    assert "stopped" in status and len(final_text) >= len(text_at_stop)


def test_stop_while_waiting_for_the_model_is_reported(engine):
    flag = threading.Event()
    flag.set()
    status = last(GenerationHandlers(engine, update_s=0).complete("x", flag, panel()))["status"]
    assert "stopped before the model began" in status


def test_truncated_prompt_gets_a_notice(engine):
    status = last(GenerationHandlers(engine, update_s=0).complete("x = 1\n" * 200, None,
                                                       panel(max_new_tokens=4, context_length=64)))["status"]
    assert "did not fit the context" in status


def test_bad_parameters_and_no_model_are_reported_not_raised(engine, models_dir):
    from backend.engine import Engine
    status = last(GenerationHandlers(engine, update_s=0).complete("x", None, panel(top_p=0.0)))["status"]
    assert "top_p" in status
    status = last(GenerationHandlers(Engine(models_dir), update_s=0).complete("x", None, panel()))["status"]
    assert "no model is loaded" in status


def test_fill_in_the_middle_with_marker_and_accept(engine):
    handlers = GenerationHandlers(engine, update_s=0)
    code = "def f(x):\n    <FILL>\n\nprint(f(2))\n"
    shown = last(handlers.fill(code, GAP_MARKER, "", "", "psm", None, panel(max_new_tokens=8, seed=3)))
    merged, middle, status = shown["merged"], shown["middle"], shown["status"]
    assert '<mark class="fim-middle">' in merged and "print(f(2))" in merged and "finished" in status
    new_code = handlers.accept(code, GAP_MARKER, "", "", middle)["code"]
    assert new_code == "def f(x):\n    " + middle + "\n\nprint(f(2))\n"
    status = last(handlers.fill("no marker", GAP_MARKER, "", "", "psm", None, panel()))["status"]
    assert "exactly one <FILL>" in status
    merged = last(handlers.fill("", GAP_SPLIT, "a = ", "\nb = a", "spm", None, panel(max_new_tokens=4, seed=3)))["merged"]
    assert '<pre class="fim-merged"><code>a = <mark' in merged
    assert split_fill("a<FILL>b") == ("a", "b")


def test_tech_assistant_turn(engine):
    handlers = GenerationHandlers(engine, update_s=0)
    shown = last(handlers.chat("How do I sort a list?", [], DEFAULT_PREAMBLE, None, panel(max_new_tokens=10, seed=4)))
    history, box, status = shown["chatbot"], shown["message"], shown["status"]
    assert [m["role"] for m in history] == ["user", "assistant"] and box == "" and "finished" in status
    assert "Human:" not in history[-1]["content"]
    history = last(handlers.chat("And reverse it?", history, "", None, panel(max_new_tokens=5)))["chatbot"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def test_two_sessions_generating_at_once_both_finish(engine):
    handlers, results = GenerationHandlers(engine, update_s=0), {}

    def run(key):
        results[key] = last(handlers.complete("import os\n", None, panel(max_new_tokens=20, seed=7)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all("finished" in results[k]["status"] for k in range(2))


def test_unloading_during_generation_is_safe(models_dir, settings):
    from backend.engine import Engine
    engine = Engine(models_dir)
    engine.load(SECOND_NAME, device="cpu")
    handlers = GenerationHandlers(engine, update_s=0)
    stream = handlers.complete("def g():\n", threading.Event(), panel(max_new_tokens=400, temperature=1.0))
    next(stream)
    next(stream)
    unloader = threading.Thread(target=ModelHandlers(engine, settings).unload, args=(SECOND_NAME,))
    unloader.start()
    status = last(stream)["status"]
    unloader.join(10)
    assert not unloader.is_alive() and engine.loaded is None
    assert "stopped" in status or "finished" in status
    status = last(handlers.complete("x", None, panel()))["status"]
    assert "no model is loaded" in status
