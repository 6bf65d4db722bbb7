"""Downloading models from the Hub: the Download tab and the compact box in the Model tab (same code)."""
from __future__ import annotations

import dataclasses
import html
import time
from typing import Any, Iterator

import gradio as gr

from backend import hub
from backend.engine import Engine
from ui.model_tab import human_bytes

POLL_S = 0.25


def _bar(label: str, done: int, total: int) -> str:
    pct = 100.0 * done / total if total else 0.0
    return (f'<div class="dl-row"><span class="dl-label">{html.escape(label)}</span>'
            f'<div class="dl-bar"><div class="dl-fill" style="width:{pct:.1f}%"></div></div>'
            f'<span class="dl-pct">{pct:.0f}%</span></div>')


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def progress_html(p: hub.DownloadProgress | None, files: dict[str, tuple[int, int]] | None = None) -> str:
    """The overall bar, one bar per file seen so far (else the current file), speed and ETA."""
    if p is None:
        return '<div class="dl-progress">Resolving the repository …</div>'
    overall = _bar(f"overall · {p.files_done}/{p.files_total} files · {human_bytes(p.done)} of "
                   f"{human_bytes(p.total)}", p.done, p.total)
    files = files or ({p.filename: (p.file_done, p.file_total)} if p.filename else {})
    bars = "".join(_bar(f"{name} · {human_bytes(done)} of {human_bytes(total)}", done, total)
                   for name, (done, total) in sorted(files.items()))
    stats = f"{human_bytes(p.speed)}/s · ETA {_duration(p.eta)}"
    return f'<div class="dl-progress">{overall}{bars}<div class="dl-stats">{stats}</div></div>'


def result_markdown(result: hub.DownloadResult) -> str:
    sums = result.sha256
    head = ("Already up to date" if result.up_to_date else "Downloaded") + \
           f" into `{result.path.parent.name}/{result.path.name}` (commit `{result.commit[:10]}`); checksums verified."
    rows = [f"| {name} | `{sums.get(name, '')[:16]}…` |" for name in result.files]
    return "\n".join([head, "", "Choose it in the Model dropdown.", "", "| file | sha256 |", "|---|---|", *rows])


@dataclasses.dataclass
class DownloadBox:
    repo: gr.Textbox
    token: gr.Textbox
    weights: gr.Checkbox
    download: gr.Button
    cancel: gr.Button
    progress: gr.HTML
    result: gr.Markdown
    files: gr.Markdown


class DownloadHandlers:
    """Start, watch and cancel Hub downloads into the engine's models folder."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def file_list(self, repo: str, token: str, weights: bool = True) -> str:
        """Markdown: the files a download would fetch, their sizes and the total."""
        try:
            listing = hub.list_files(repo, token=token or None)
        except hub.DownloadError as exc:
            return f"**Failed:** {exc}"
        if not weights:
            listing = hub.without_weights(listing)
        rows = [f"| {f.path} | {human_bytes(f.size)} |" for f in listing.files]
        skipped = (f"\n\nSkipped (not needed or unsafe): {', '.join(f.path for f in listing.skipped)}"
                   if listing.skipped else "")
        return "\n".join([f"**{listing.ref.repo_id}** at `{listing.ref.branch}` (commit `{listing.commit[:10]}`) → "
                          f"`{hub.destination(listing.ref, self.engine.models_dir).name}`", "",
                          "| file | size |", "|---|---|", *rows,
                          f"| **total** ({len(listing.files)} files) | **{human_bytes(listing.total_size)}** |"]) + skipped

    def download(self, repo: str, token: str, current_model: str | None,
                 weights: bool = True) -> Iterator[tuple[Any, ...]]:
        """Yields (job, progress html, result markdown, model dropdown update) until the job ends."""
        keep = gr.update()
        files: dict[str, tuple[int, int]] = {}

        def remember(p: hub.DownloadProgress) -> None:
            if p.filename:   # the job reports one file at a time; the bars show them all
                files[p.filename] = (p.file_done, p.file_total)

        try:
            job = hub.start_download(repo, self.engine.models_dir, token=token or None, on_progress=remember,
                                     weights=weights)
        except hub.DownloadError as exc:
            yield None, "", f"**Failed:** {exc}", keep
            return
        yield job, progress_html(None), f"Downloading **{repo.strip()}** …", keep
        while not job.done:
            time.sleep(POLL_S)
            yield job, progress_html(job.progress, dict(files)), gr.update(), keep
        shown = progress_html(job.progress, dict(files))
        try:
            result = job.wait()
        except hub.DownloadCancelled as exc:
            yield None, shown, f"{exc}", keep
            return
        except hub.DownloadError as exc:
            yield None, shown, f"**Failed:** {exc}", keep
            return
        names = self.engine.list_models()
        yield (None, shown, result_markdown(result),
               gr.update(choices=names, value=current_model if current_model in names else None))

    def cancel(self, job: hub.DownloadJob | None) -> str:
        if job is None or job.done:
            return "Nothing to cancel."
        job.cancel()
        return "Cancelling …"


def build_download_box(handlers: DownloadHandlers, model_dropdown: gr.Dropdown, compact: bool,
                       prefix: str) -> DownloadBox:
    """The download form; `compact` leaves out the file list (the Model tab's box)."""
    job = gr.State(None)
    with gr.Row(equal_height=True):
        repo = gr.Textbox(label="Repository", placeholder="TheBloke/starcoder-GPTQ or TheBloke/starcoder-GPTQ:main",
                          scale=4, elem_id=f"{prefix}-repo")
        token = gr.Textbox(label="Access token (gated or private repos)", type="password", scale=2,
                           elem_id=f"{prefix}-token", visible=not compact)
    # a remote engine's server holds the weights: by default fetch only what the app reads here
    weights = gr.Checkbox(handlers.engine.needs_weights, label="Weights too (untick for a model a vLLM server "
                          "serves: tokenizer and config files only)", elem_id=f"{prefix}-weights",
                          visible=not compact or not handlers.engine.needs_weights)
    with gr.Row():
        listing = gr.Button("Get file list", elem_id=f"{prefix}-list", visible=not compact)
        download = gr.Button("Download", variant="primary", elem_id=f"{prefix}-download")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{prefix}-cancel")
    progress = gr.HTML("", elem_id=f"{prefix}-progress")
    result = gr.Markdown("", elem_id=f"{prefix}-result", elem_classes="dl-tables")
    files = gr.Markdown("", elem_id=f"{prefix}-files", visible=not compact, elem_classes="dl-tables")
    listing.click(handlers.file_list, inputs=[repo, token, weights], outputs=files, concurrency_id="hub")
    download.click(handlers.download, inputs=[repo, token, model_dropdown, weights],
                   outputs=[job, progress, result, model_dropdown], concurrency_id="hub", concurrency_limit=2,
                   show_progress="hidden")
    cancel.click(handlers.cancel, inputs=job, outputs=result, queue=False)
    return DownloadBox(repo, token, weights, download, cancel, progress, result, files)


DOWNLOAD_CSS = """
.dl-progress { font-size: 0.9em; }
.dl-row { display: flex; align-items: center; gap: 0.6em; margin: 0.25em 0; }
.dl-label { flex: 0 0 45%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.dl-bar { flex: 1; height: 0.8em; border-radius: 0.4em; background: var(--neutral-200); overflow: hidden; }
.dl-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.dl-pct { flex: 0 0 3em; text-align: right; }
.dl-stats { color: var(--body-text-color-subdued); }
.dl-tables table { font-size: 0.85em; }
.dl-tables th, .dl-tables td { padding: 0.15em 0.8em; }
"""
