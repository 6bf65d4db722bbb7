"""End-to-end: the real app in a subprocess, driven through headless Chromium like a user would."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.helpers.hub_server import read_folder
from tests.ui.conftest import ARTIFACTS, HUB_REPO, wait_until_ready
from tests.helpers.models import BROKEN_NAME, DEMO_NAME, SECOND_NAME

pytestmark = pytest.mark.browser
LOAD_TIMEOUT = 60_000
GEN_TIMEOUT = 60_000


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def choose_model(page: Page, name: str) -> None:
    open_tab(page, "Model")
    page.click("#model-select input")
    page.click(f'#model-select li[role=option][aria-label="{name}"]')


def set_number(page: Page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def set_mode(page: Page, label: str) -> None:
    open_tab(page, "Text Generation")
    page.locator("#gen-mode label", has_text=label).click()


def output_text(page: Page) -> str:
    return page.input_value("#output textarea")


def test_choose_and_load_a_model(page: Page):
    choose_model(page, SECOND_NAME)
    status = page.locator("#model-status")
    expect(status).to_contain_text(f"Loaded {SECOND_NAME}", timeout=LOAD_TIMEOUT)
    expect(page.locator("#model-info")).to_contain_text("attn.c_attn")
    expect(page.locator("#model-info")).to_contain_text("memory used")
    shot(page, "model_tab")
    choose_model(page, DEMO_NAME)
    expect(status).to_contain_text(f"Loaded {DEMO_NAME}", timeout=LOAD_TIMEOUT)


def test_generate_streams_stop_and_continue(page: Page):
    set_mode(page, "Completion")
    set_number(page, "p-temperature", 0)      # greedy: the same long text every run, so Stop lands midway
    set_number(page, "p-max_new_tokens", 2000)   # seconds even on a fast CPU: Stop lands midway
    status = page.locator("#gen-status")
    page.click("#generate")
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 3 and time.monotonic() < deadline:
        text = output_text(page)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        page.wait_for_timeout(30)
    page.click("#stop")
    expect(status).to_contain_text("finished", timeout=GEN_TIMEOUT)
    assert "stopped" in status.inner_text(), status.inner_text()
    assert len(seen) >= 3 and seen[1].startswith(seen[0]), "the output did not stream"
    assert re.search(r"generated \d+ tokens · [\d.]+ tokens/s", status.inner_text())
    shot(page, "generation_completion")
    stopped = output_text(page)
    set_number(page, "p-max_new_tokens", 8)
    page.click("#continue")
    expect(status).to_contain_text("max_new_tokens reached", timeout=GEN_TIMEOUT)
    assert output_text(page).startswith(stopped)


def test_fill_in_the_middle_in_the_editor(page: Page):
    set_mode(page, "Fill-in-the-middle")
    set_number(page, "p-max_new_tokens", 12)
    editor = page.locator("#fim-code .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text("def area(r):\n    return <FILL>\n\nprint(area(2))\n")
    page.click("#fim-fill")
    expect(page.locator("#gen-status")).to_contain_text("finished", timeout=GEN_TIMEOUT)
    merged = page.locator("#fim-merged .fim-merged")
    expect(merged).to_contain_text("print(area(2))")
    expect(merged.locator("mark.fim-middle")).to_have_count(1)
    shot(page, "generation_fim")
    page.click("#fim-accept")
    # the exact merge is checked in test_handlers; a random stand-in model writes unprintable bytes
    expect(editor).not_to_contain_text("<FILL>")
    expect(editor).to_contain_text("return")
    expect(editor).to_contain_text("print(area(2))")


def test_tech_assistant_turn(page: Page):
    set_mode(page, "Tech assistant")
    set_number(page, "p-max_new_tokens", 12)
    page.fill("#chat-message textarea", "How do I read a file in Python?")
    page.click("#chat-send")
    expect(page.locator("#gen-status")).to_contain_text("finished", timeout=GEN_TIMEOUT)
    chat = page.locator("#chatbot")
    expect(chat).to_contain_text("How do I read a file in Python?")
    expect(chat.locator(".message-row, [data-testid=bot], .bot").first).to_be_visible()
    expect(page.locator("#chat-message textarea")).to_have_value("")
    shot(page, "generation_assistant")


def test_two_tabs_generating_at_once_both_finish(page: Page, browser, app):
    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(app.url)
        wait_until_ready(other)
        for tab in (page, other):
            set_mode(tab, "Completion")
            set_number(tab, "p-max_new_tokens", 40)
        page.click("#generate")
        other.click("#generate")
        for tab in (page, other):
            expect(tab.locator("#gen-status")).to_contain_text("generated 40 tokens", timeout=GEN_TIMEOUT)
    finally:
        other.close()


def test_unloading_during_generation_stops_it_safely(page: Page):
    set_mode(page, "Completion")
    set_number(page, "p-temperature", 0)
    set_number(page, "p-max_new_tokens", 2000)   # seconds even on a fast CPU: Stop lands midway
    page.click("#generate")
    expect(page.locator("#gen-status")).to_contain_text("generating", timeout=GEN_TIMEOUT)
    open_tab(page, "Model")
    page.click("#model-unload")
    expect(page.locator("#model-status")).to_contain_text(f"Unloaded {DEMO_NAME}", timeout=GEN_TIMEOUT)
    open_tab(page, "Text Generation")
    expect(page.locator("#gen-status")).to_contain_text("stopped")
    page.click("#generate")
    expect(page.locator("#gen-status")).to_contain_text("no model is loaded", timeout=GEN_TIMEOUT)
    open_tab(page, "Model")
    page.click("#model-load")
    expect(page.locator("#model-status")).to_contain_text(f"Loaded {DEMO_NAME}", timeout=LOAD_TIMEOUT)


def test_a_corrupt_model_folder_shows_an_error_and_the_app_keeps_working(page: Page):
    choose_model(page, BROKEN_NAME)
    status = page.locator("#model-status")
    expect(status).to_contain_text(f"Failed to load {BROKEN_NAME}", timeout=LOAD_TIMEOUT)
    expect(page.locator("#model-info")).to_contain_text("cannot be read")
    shot(page, "model_tab_broken")
    choose_model(page, DEMO_NAME)
    expect(status).to_contain_text(f"Loaded {DEMO_NAME}", timeout=LOAD_TIMEOUT)
    set_mode(page, "Completion")
    set_number(page, "p-max_new_tokens", 6)
    page.click("#generate")
    expect(page.locator("#gen-status")).to_contain_text("finished", timeout=GEN_TIMEOUT)


def test_download_tab_lists_files_and_downloads_with_progress(page: Page, hub_server, app_models_dir):
    hub_server.add_repo(HUB_REPO, read_folder(app_models_dir / DEMO_NAME), branch="v2")
    open_tab(page, "Download")
    page.fill("#dl-repo textarea, #dl-repo input", f"{HUB_REPO}:v2")
    page.click("#dl-list")
    listing = page.locator("#dl-files")
    expect(listing).to_contain_text("model.safetensors", timeout=30_000)
    expect(listing).to_contain_text("total")
    page.click("#dl-download")
    result = page.locator("#dl-result")
    expect(result).to_contain_text("checksums verified", timeout=60_000)
    progress = page.locator("#dl-progress")
    expect(progress).to_contain_text("overall")
    expect(progress).to_contain_text("100%")
    expect(progress).to_contain_text("model.safetensors")
    shot(page, "download_tab")
    choose_model(page, "TheBloke_starcoder-GPTQ_v2")
    expect(page.locator("#model-status")).to_contain_text("Loaded TheBloke_starcoder-GPTQ_v2",
                                                          timeout=LOAD_TIMEOUT)


def test_model_card_steps_with_the_compact_download_box(page: Page):
    open_tab(page, "Model")
    page.get_by_text("Download custom model").click()
    page.fill("#model-dl-repo textarea, #model-dl-repo input", HUB_REPO)
    page.click("#model-dl-download")
    expect(page.locator("#model-dl-result")).to_contain_text("checksums verified", timeout=60_000)
    shot(page, "model_tab_download_box")
    page.click("#model-refresh")
    choose_model(page, "TheBloke_starcoder-GPTQ")
    expect(page.locator("#model-status")).to_contain_text("Loaded TheBloke_starcoder-GPTQ", timeout=LOAD_TIMEOUT)
    expect(page.locator("#model-info")).to_contain_text("group_size")


def test_saved_settings_survive_a_restart_and_other_models_get_defaults(browser, app):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        page.goto(app.url)
        wait_until_ready(page)
        choose_model(page, DEMO_NAME)
        expect(page.locator("#model-status")).to_contain_text(f"Loaded {DEMO_NAME}", timeout=LOAD_TIMEOUT)
        set_mode(page, "Fill-in-the-middle")
        set_number(page, "p-temperature", 1.23)
        set_number(page, "p-max_new_tokens", 321)
        open_tab(page, "Model")
        page.click("#model-save")
        expect(page.locator("#model-status")).to_contain_text(f"Saved settings for {DEMO_NAME}")
        page.close()

        app.stop()
        app.start()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(app.url)
        wait_until_ready(page)
        temperature = page.locator("#p-temperature input[type=number]")
        expect(temperature).to_have_value("1.23")
        expect(page.locator("#p-max_new_tokens input[type=number]")).to_have_value("321")
        expect(page.locator("#gen-mode input[value=fim]")).to_be_checked()
        expect(page.locator("#fim-code")).to_be_visible()
        shot(page, "generation_after_restart")

        choose_model(page, SECOND_NAME)
        expect(page.locator("#model-status")).to_contain_text(f"Loaded {SECOND_NAME}", timeout=LOAD_TIMEOUT)
        expect(temperature).to_have_value("0.2")
        expect(page.locator("#p-max_new_tokens input[type=number]")).to_have_value("128")
        expect(page.locator("#gen-mode input[value=completion]")).to_be_checked()

        choose_model(page, DEMO_NAME)
        expect(temperature).to_have_value("1.23")
    finally:
        page.close()
