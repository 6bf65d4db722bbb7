"""The Text Generation tab: completion, fill-in-the-middle and tech-assistant modes, with the parameters panel."""
from __future__ import annotations

import contextlib
import dataclasses
import html
import threading
import time
from typing import Any, Iterator

import gradio as gr

from backend.engine import Engine, NoModelLoaded
from backend.errors import GenerationError
from backend.generate import Chunk
from backend.prompts import DEFAULT_PREAMBLE
from ui.params import build_params_panel, generation_params
from ui.wiring import on

FILL = "<FILL>"
MODES = [("Completion", "completion"), ("Fill-in-the-middle", "fim"), ("Tech assistant", "assistant")]
GAP_MARKER, GAP_SPLIT = "<FILL> marker in the code", "separate prefix and suffix"
FINISH = {"eos": "end of text", "stop": "stop string", "length": "max_new_tokens reached",
          "cancelled": "stopped"}
UPDATE_S = 0.05    # at most 20 screen updates a second while streaming
# GPU-bound work runs one at a time over every session, so two tabs queue instead of colliding
GPU_QUEUE = {"concurrency_id": "gpu", "concurrency_limit": 1}
FIM_EXAMPLE = 'def fibonacci(n: int) -> int:\n    """The n-th Fibonacci number."""\n    <FILL>\n\n\nprint(fibonacci(10))\n'


def describe(chunk: Chunk | None, running: bool) -> str:
    """The status line: token counts, speed, why it ended, and a truncation notice."""
    if chunk is None:
        return "Waiting for the model …" if running else ""
    state = "generating" if running else f"finished: {FINISH.get(chunk.finish_reason, chunk.finish_reason)}"
    line = (f"{state} · prompt {chunk.prompt_tokens} tokens · generated {chunk.completion_tokens} tokens · "
            f"{chunk.tokens_per_s:.1f} tokens/s · {chunk.elapsed_s:.2f} s")
    if chunk.truncated_tokens:
        line += (f"\n\nThe prompt did not fit the context: its first {chunk.truncated_tokens} tokens were "
                 f"dropped. Shorten it, lower max_new_tokens or raise the context length.")
    return line


def split_fill(code: str) -> tuple[str, str]:
    """(prefix, suffix) around the single <FILL> marker."""
    count = code.count(FILL)
    if count != 1:
        raise GenerationError(f"put exactly one {FILL} where the model should write code (found {count}), "
                              f"or switch to separate prefix and suffix.")
    prefix, suffix = code.split(FILL)
    return prefix, suffix


def merged_html(prefix: str, middle: str, suffix: str) -> str:
    """The merged code with the generated middle highlighted."""
    return ('<div class="fim-caption">Merged code: the generated middle is highlighted</div>'
            f'<pre class="fim-merged"><code>{html.escape(prefix)}<mark class="fim-middle">{html.escape(middle)}'
            f'</mark>{html.escape(suffix)}</code></pre>')


def new_flag() -> threading.Event:
    """A fresh stop flag for this session's next generation (Stop sets the one in the session's state)."""
    return threading.Event()


def stop(flag: threading.Event | None) -> None:
    if flag is not None:
        flag.set()


@dataclasses.dataclass
class GenerationTab:
    mode: gr.Radio
    prompt: gr.Textbox
    output: gr.Textbox
    code: gr.Code
    gap: gr.Radio
    prefix: gr.Code
    suffix: gr.Code
    fim_order: gr.Radio
    chatbot: gr.Chatbot
    message: gr.Textbox
    preamble: gr.Textbox
    status: gr.Markdown
    panel: dict[str, gr.components.Component]


class GenerationHandlers:
    """Streaming handlers over the Engine; each takes the session's stop flag and the parameters panel."""

    def __init__(self, engine: Engine, update_s: float = UPDATE_S) -> None:
        self.engine = engine
        self.update_s = update_s

    def _stream(self, chunks_of, flag: threading.Event | None, params: dict) -> Iterator[tuple[str, Chunk | None]]:
        """(text so far, last chunk) per streamed piece; errors become a GenerationError."""
        try:
            chunks = chunks_of(generation_params(params), flag or threading.Event())
        except NoModelLoaded as exc:
            raise GenerationError(str(exc)) from None
        text, shown_at, chunk = "", 0.0, None
        with contextlib.closing(chunks):   # releases the engine lock even if the browser goes away
            try:
                for chunk in chunks:
                    text += chunk.text
                    # a browser flooded with one update per token answers the Stop button late
                    if chunk.finish_reason is not None or time.monotonic() - shown_at >= self.update_s:
                        shown_at = time.monotonic()
                        yield text, chunk
            except NoModelLoaded as exc:
                raise GenerationError(str(exc)) from None
        if chunk is None:   # the engine yields nothing when Stop came while this request waited its turn
            raise GenerationError("stopped before the model began generating.")

    def complete(self, prompt: str, flag: threading.Event | None, params: dict) -> Iterator[dict[str, Any]]:
        """Yields output and status."""
        yield {"output": "", "status": describe(None, True)}
        yield from self._complete_into("", prompt, flag, params)

    def continue_(self, prompt: str, output: str, flag: threading.Event | None,
                  params: dict) -> Iterator[dict[str, Any]]:
        """Generate more after prompt + output, appending to the output."""
        yield {"output": output, "status": describe(None, True)}
        yield from self._complete_into(output, prompt + output, flag, params)

    def _complete_into(self, before: str, prompt: str, flag, params: dict) -> Iterator[dict[str, Any]]:
        try:
            for text, last in self._stream(lambda p, c: self.engine.complete(prompt, p, c), flag, params):
                yield {"output": before + text, "status": describe(last, last.finish_reason is None)}
        except GenerationError as exc:
            yield {"status": f"{exc}"}

    def fill(self, code: str, gap: str, prefix: str, suffix: str, fim_order: str, flag: threading.Event | None,
             params: dict) -> Iterator[dict[str, Any]]:
        """Yields the merged html, the middle and the status."""
        try:
            if gap == GAP_MARKER:
                prefix, suffix = split_fill(code or "")
            yield {"merged": merged_html(prefix, "", suffix), "middle": "", "status": describe(None, True)}
            for middle, last in self._stream(lambda p, c: self.engine.infill(prefix, suffix, p, fim_order, c),
                                             flag, params):
                yield {"merged": merged_html(prefix, middle, suffix), "middle": middle,
                       "status": describe(last, last.finish_reason is None)}
        except GenerationError as exc:
            yield {"status": f"{exc}"}

    def accept(self, code: str, gap: str, prefix: str, suffix: str, middle: str) -> dict[str, Any]:
        """Put the middle into the code."""
        if gap == GAP_MARKER:
            try:
                before, after = split_fill(code or "")
            except GenerationError as exc:
                return {"status": f"{exc}"}
            return {"code": before + middle + after, "status": "Accepted: the middle is now part of the code."}
        return {"code": prefix + middle + suffix, "prefix": prefix + middle,
                "status": "Accepted: the middle was appended to the prefix."}

    def chat(self, message: str, history: list[dict], assistant_preamble: str, flag: threading.Event | None,
             params: dict) -> Iterator[dict[str, Any]]:
        """Yields the dialogue, the message box and the status."""
        if not (message or "").strip():
            yield {"chatbot": history, "message": message, "status": "Type a message first."}
            return
        turns = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
        turns.append({"role": "user", "content": message.strip()})
        shown = turns + [{"role": "assistant", "content": ""}]
        yield {"chatbot": shown, "message": "", "status": describe(None, True)}
        try:
            for reply, last in self._stream(lambda p, c: self.engine.chat(turns, p, assistant_preamble, c),
                                            flag, params):
                shown[-1] = {"role": "assistant", "content": reply.strip()}
                yield {"chatbot": shown, "message": "", "status": describe(last, last.finish_reason is None)}
        except GenerationError as exc:
            yield {"chatbot": turns, "message": message, "status": f"{exc}"}


def _text(content: Any) -> str:
    """Chatbot message content as plain text (Gradio 6 may hand back a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def build_generation_tab(handlers: GenerationHandlers, values: dict[str, Any]) -> GenerationTab:
    """Lay out the tab showing `values` (the selected model's settings) and wire its own events."""
    flag = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            mode = gr.Radio(MODES, value=values.get("mode", "completion"), label="Mode", elem_id="gen-mode")
            with gr.Column(visible=values.get("mode", "completion") == "completion") as completion_box:
                with gr.Row():
                    prompt = gr.Textbox(lines=14, max_lines=14, label="Prompt", elem_id="prompt",
                                        value="def fibonacci(n):\n")
                    output = gr.Textbox(lines=14, max_lines=14, label="Output", elem_id="output",
                                        buttons=["copy"])
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_completion = gr.Button("Stop", variant="stop", elem_id="stop")
                    more = gr.Button("Continue", elem_id="continue")
            with gr.Column(visible=values.get("mode") == "fim") as fim_box:
                gap = gr.Radio([GAP_MARKER, GAP_SPLIT], value=GAP_MARKER, label="The gap is given by",
                               elem_id="fim-gap")
                code = gr.Code(FIM_EXAMPLE, language="python", label=f"Code — put {FILL} where the middle goes",
                               lines=12, interactive=True, elem_id="fim-code")
                with gr.Row(visible=False) as split_box:
                    prefix = gr.Code("", language="python", label="Prefix", lines=6, interactive=True,
                                     elem_id="fim-prefix")
                    suffix = gr.Code("", language="python", label="Suffix", lines=6, interactive=True,
                                     elem_id="fim-suffix")
                fim_order = gr.Radio([("prefix-suffix-middle (PSM)", "psm"), ("suffix-prefix-middle (SPM)", "spm")],
                                     value=values.get("fim_order", "psm"), label="FIM order", elem_id="fim-order")
                with gr.Row():
                    fill = gr.Button("Fill", variant="primary", elem_id="fim-fill")
                    stop_fim = gr.Button("Stop", variant="stop", elem_id="fim-stop")
                    accept = gr.Button("Accept", elem_id="fim-accept")
                    regenerate = gr.Button("Regenerate", elem_id="fim-regenerate")
                merged = gr.HTML("", elem_id="fim-merged")
                middle = gr.State("")
            with gr.Column(visible=values.get("mode") == "assistant") as assistant_box:
                chatbot = gr.Chatbot(label="Tech assistant", height=420, elem_id="chatbot", buttons=["copy"])
                with gr.Row(equal_height=True):
                    message = gr.Textbox(label="Message", placeholder="Ask about code …", scale=5, lines=2,
                                         elem_id="chat-message")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                with gr.Row():
                    stop_chat = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                    clear = gr.Button("Clear the dialogue", elem_id="chat-clear")
                with gr.Accordion("Dialogue preamble (few-shot Human/Assistant turns)", open=False):
                    preamble = gr.Textbox(values.get("assistant_preamble") or DEFAULT_PREAMBLE, lines=14,
                                          max_lines=40, show_label=False, elem_id="chat-preamble")
            status = gr.Markdown("", elem_id="gen-status")
        with gr.Column(scale=1, min_width=260):
            with gr.Accordion("Parameters", open=True):
                panel = build_params_panel(values, handlers.engine.unsupported_settings)

    mode.change(lambda m: [gr.update(visible=m == v) for _, v in MODES], inputs=mode,
                outputs=[completion_box, fim_box, assistant_box], queue=False)
    gap.change(lambda g: gr.update(visible=g == GAP_SPLIT), inputs=gap, outputs=split_box, queue=False)

    def arm(trigger, fn, inputs, outputs) -> None:
        # a fresh stop flag first, then the GPU-bound handler in the shared queue
        on(trigger(new_flag, outputs=flag, queue=False).then, fn, {**inputs, "flag": flag, "params": panel}, outputs,
           **GPU_QUEUE, show_progress="hidden")

    arm(generate.click, handlers.complete, {"prompt": prompt}, {"output": output, "status": status})
    arm(more.click, handlers.continue_, {"prompt": prompt, "output": output}, {"output": output, "status": status})
    fim_inputs = {"code": code, "gap": gap, "prefix": prefix, "suffix": suffix, "fim_order": fim_order}
    fim_outputs = {"merged": merged, "middle": middle, "status": status}
    arm(fill.click, handlers.fill, fim_inputs, fim_outputs)
    arm(regenerate.click, handlers.fill, fim_inputs, fim_outputs)
    on(accept.click, handlers.accept, {"code": code, "gap": gap, "prefix": prefix, "suffix": suffix, "middle": middle},
       {"code": code, "prefix": prefix, "suffix": suffix, "status": status}, queue=False)
    chat_inputs = {"message": message, "history": chatbot, "assistant_preamble": preamble}
    chat_outputs = {"chatbot": chatbot, "message": message, "status": status}
    arm(send.click, handlers.chat, chat_inputs, chat_outputs)
    arm(message.submit, handlers.chat, chat_inputs, chat_outputs)
    clear.click(lambda: ([], ""), outputs=[chatbot, status], queue=False)
    for button in (stop_completion, stop_fim, stop_chat):
        button.click(stop, inputs=flag, queue=False)
    return GenerationTab(mode, prompt, output, code, gap, prefix, suffix, fim_order, chatbot, message, preamble,
                         status, panel)


GENERATION_CSS = """
.fim-merged { padding: 0.8em; border-radius: 0.5em; background: var(--code-background-fill, #f6f8fa);
              font-family: var(--font-mono); font-size: 0.9em; white-space: pre-wrap; }
.fim-caption { font-size: 0.85em; color: var(--body-text-color-subdued); margin-bottom: 0.3em; }
.fim-middle { background: #fde68a; color: #111; border-radius: 0.2em; outline: 1px solid #f59e0b; }
"""
