"""FIM through the API on the real demo model: only the middle comes back, and it is the engine's own infill."""
from __future__ import annotations

import httpx
import openai

from tests.helpers.serving import served_params

PREFIX = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
SUFFIX = "\n\nprint(fibonacci(10))\n"


def test_fim_returns_the_engines_middle_and_nothing_else(demo_api, demo_dir):
    engine, url = demo_api
    params = served_params(engine, max_new_tokens=48, seed=1234)
    middle = "".join(c.text for c in engine.infill(PREFIX, SUFFIX, params))

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    out = client.completions.create(model=demo_dir.name, prompt=PREFIX, suffix=SUFFIX, max_tokens=48, seed=1234)
    text = out.choices[0].text
    assert text == middle
    assert PREFIX + text + SUFFIX == PREFIX + middle + SUFFIX
    # only the middle: neither the code before the gap nor the code after it is echoed back
    assert not text.startswith(PREFIX) and not text.endswith(SUFFIX)
    assert "<fim_" not in text and "<|endoftext|>" not in text

    infill = httpx.post(f"{url}/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 48,
                                               "seed": 1234}, timeout=300).json()
    assert infill["content"] == middle
