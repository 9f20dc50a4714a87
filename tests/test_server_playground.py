"""The chat page at / in headless Chromium (Debian's), driven by Playwright, against the real server.

Playwright's own browser download cannot work here: it drives the system's /usr/bin/chromium.
The screenshots in docs/ are written by these tests.
"""

import json
import re
import time

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ROOT, ServerProcess
from tests.prometheus import scrape, value

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet: no sign-in, updates or background calls out of a machine with no network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
API_KEY = "sk-playground-test"
CHAT = "/v1/chat/completions"
# A question SmolLM2 answers with a long reply at temperature 0 (122 tokens: "1. 1\n2. 2\n...").
COUNTING = "Count from 1 to 1000, one number per line."
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Generous: the machine running the suite may be busy with other servers.
REPLY_TIMEOUT_MS = 240_000
SCREENSHOTS = ROOT / "docs"


@pytest.fixture(scope="module")
def keyed_server():
    """A real server with API keys on, and room for one generation at a time (to meet the cap)."""
    proc = ServerProcess(env={"API_KEYS": API_KEY, "MAX_CONCURRENT": "1"}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ChatPage:
    """One browser tab on the chat page, recording every request it makes."""

    def __init__(self, browser, server: ServerProcess, **context_options):
        self.server = server
        self.context = browser.new_context(**{"viewport": DESKTOP, **context_options})
        self.page = self.context.new_page()
        self.requests = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(error))
        self.page.goto(server.base_url + "/")

    def enter_key(self, key: str = API_KEY) -> None:
        self.page.fill("#api-key", key)
        self.page.press("#api-key", "Tab")  # a change event: the page reloads the model list

    def wait_for_models(self) -> None:
        expect(self.page.locator("#model option")).to_have_count(1)
        expect(self.page.locator("#model")).to_have_value(DEFAULT_MODEL_NAME)

    def settings(self, temperature=None, top_p=None, max_tokens=None, system=None) -> None:
        for selector, text in (("#temperature", temperature), ("#top-p", top_p), ("#max-tokens", max_tokens),
                               ("#system-prompt", system)):
            if text is not None:
                self.page.fill(selector, str(text))

    def ask(self, question: str):
        """Type a question, press Enter; the reply's list item."""
        replies = self.page.locator(".message.assistant")
        count = replies.count()
        self.page.fill("#prompt", question)
        self.page.press("#prompt", "Enter")
        expect(replies).to_have_count(count + 1)
        return replies.nth(count)

    def wait_until_finished(self, reply) -> str:
        expect(reply).to_have_attribute("data-state", re.compile("done|stopped|error"), timeout=REPLY_TIMEOUT_MS)
        return reply.get_attribute("data-state")

    def chat_requests(self):
        return [r for r in self.requests if r.url == self.server.base_url + CHAT]

    def assert_everything_came_from_the_server(self) -> None:
        assert self.requests
        foreign = [r.url for r in self.requests if not r.url.startswith(self.server.base_url + "/")]
        assert not foreign, foreign
        assert not self.errors, self.errors

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser, keyed_server):
    pages = []

    def open_(**context_options) -> ChatPage:
        pages.append(ChatPage(browser, keyed_server, **context_options))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


def engine_load(server):
    samples = scrape(server.base_url)
    return value(samples, "vllm:num_requests_running"), value(samples, "vllm:num_requests_waiting")


# Records, in the page, when the text of the n-th reply changed, and how long it then was.
WATCH_REPLY = """n => {
  window.replyChanges = [];
  const messages = document.getElementById('messages');
  new MutationObserver(() => {
    const reply = messages.querySelectorAll('.message.assistant .content')[n];
    if (reply) window.replyChanges.push([performance.now(), reply.textContent.length]);
  }).observe(messages, {childList: true, characterData: true, subtree: true});
}"""
# When the last byte of the last chat response arrived (Resource Timing, same clock).
RESPONSE_END = """() => performance.getEntriesByType('resource')
  .filter(entry => entry.name.endsWith('/v1/chat/completions')).map(entry => entry.responseEnd).pop()"""


def test_a_conversation_streams_into_the_page(open_page, keyed_server):
    chat = open_page()
    chat.enter_key()
    chat.wait_for_models()
    chat.settings(temperature=0, top_p=0.9, max_tokens=12, system="You are a helpful assistant.")

    first = chat.ask("What is the capital of France?")
    assert chat.wait_until_finished(first) == "done"
    assert "Paris" in first.locator(".content").inner_text()
    response = chat.chat_requests()[0].response()
    log = keyed_server.request_log_line(response.headers["x-request-id"])
    meta = first.locator(".meta").inner_text()
    assert f"{log['prompt_tokens']} prompt + {log['completion_tokens']} completion tokens" in meta
    ttft_ms = int(re.search(r"first token (\d+) ms", meta).group(1))
    assert 0 < ttft_ms < log["duration_s"] * 1000 + 1000
    assert "finish: stop" in meta

    # The second question goes out with the conversation so far, and its reply grows on screen
    # while the response is still arriving.
    chat.page.evaluate(WATCH_REPLY, 1)
    second = chat.ask(COUNTING)
    assert chat.wait_until_finished(second) == "done"
    body = json.loads(chat.chat_requests()[1].post_data)
    assert body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first.locator(".content").inner_text()},
        {"role": "user", "content": COUNTING},
    ]
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == (DEFAULT_MODEL_NAME, 0, 0.9, 12)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert chat.chat_requests()[1].headers["authorization"] == f"Bearer {API_KEY}"
    changes = chat.page.evaluate("window.replyChanges")
    response_end = chat.page.evaluate(RESPONSE_END)
    lengths_while_streaming = {length for at, length in changes if at < response_end and length > 0}
    print(f"reply text changed {len(changes)} times, {len(lengths_while_streaming)} before the response ended")
    assert len(lengths_while_streaming) >= 3, (changes, response_end)
    assert "12 completion tokens" in second.locator(".meta").inner_text()
    assert "finish: length" in second.locator(".meta").inner_text()

    chat.page.screenshot(path=str(SCREENSHOTS / "playground.png"))
    chat.assert_everything_came_from_the_server()


def wait_until_engine_idle(server, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while engine_load(server) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_load(server) == (0, 0)


def test_stop_ends_the_generation_on_the_server(open_page, keyed_server):
    aborts_before = value(scrape(keyed_server.base_url), "http_client_aborts_total", default=0, endpoint=CHAT)
    chat = open_page()
    chat.enter_key()
    chat.wait_for_models()
    chat.settings(temperature=0, max_tokens=400)
    reply = chat.ask(COUNTING)
    expect(reply.locator(".content")).to_contain_text("1", timeout=REPLY_TIMEOUT_MS)
    assert engine_load(keyed_server) == (1, 0)

    chat.page.click("#stop")
    assert chat.wait_until_finished(reply) == "stopped"
    assert "stopped" in reply.locator(".meta").inner_text()
    stopped_text = reply.locator(".content").inner_text()
    # The engine lets go of the request as soon as the server sees the connection closed.
    wait_until_engine_idle(keyed_server)
    assert value(scrape(keyed_server.base_url), "http_client_aborts_total", endpoint=CHAT) == aborts_before + 1
    log = keyed_server.request_log_line(chat.chat_requests()[0].response().headers["x-request-id"])
    assert log["aborted"] is True  # the stream had begun (200); its client left before the end
    assert log["completion_tokens"] < 122  # the whole answer is 122 tokens
    assert reply.locator(".content").inner_text() == stopped_text
    expect(chat.page.locator("#send")).to_be_visible()
    expect(chat.page.locator("#stop")).to_be_hidden()
    chat.assert_everything_came_from_the_server()


def test_a_busy_server_says_429(open_page, keyed_server):
    chat = open_page()
    chat.enter_key()
    chat.wait_for_models()
    chat.settings(max_tokens=5)
    # The server generates one sequence at a time (MAX_CONCURRENT=1); another client holds it.
    with requests.post(keyed_server.base_url + CHAT, stream=True, timeout=REPLY_TIMEOUT_MS / 1000,
                       headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": COUNTING}],
                             "max_tokens": 4000, "ignore_eos": True, "stream": True}) as held:
        assert held.status_code == 200
        # Keep the line iterator: a discarded one closes the connection, and the server aborts.
        lines = held.iter_lines()
        next(lines)
        assert value(scrape(keyed_server.base_url), "http_requests_generating") == 1
        refused = chat.ask("Hello")
        assert chat.wait_until_finished(refused) == "error"
    error = refused.locator(".error").inner_text()
    assert "maximum of 1 sequences" in error and error.endswith("(429, concurrency_limit_exceeded, retry after 1 s)")
    expect(chat.page.locator("#prompt")).to_have_value("Hello")  # given back to resend
    wait_until_engine_idle(keyed_server)
    chat.assert_everything_came_from_the_server()


def test_the_servers_errors_are_shown_as_they_come(open_page):
    chat = open_page()
    # No key yet: the model list is refused, and the page says what to do.
    banner = chat.page.locator("#banner")
    expect(banner).to_contain_text("You didn't provide an API key")
    expect(banner).to_contain_text("(401, invalid_api_key)")
    chat.enter_key()
    chat.wait_for_models()
    expect(banner).to_be_hidden()

    chat.enter_key("sk-wrong")
    expect(banner).to_contain_text("Incorrect API key provided. (401, invalid_api_key)")
    reply = chat.ask("Hello")
    assert chat.wait_until_finished(reply) == "error"
    assert reply.locator(".error").inner_text() == "Incorrect API key provided. (401, invalid_api_key)"
    assert chat.chat_requests()[-1].headers["authorization"] == "Bearer sk-wrong"

    chat.enter_key()
    chat.page.fill("#prompt", "")
    chat.settings(max_tokens=100000)
    reply = chat.ask("Hello")
    assert chat.wait_until_finished(reply) == "error"
    error = reply.locator(".error").inner_text()
    assert "max_tokens" in error and error.endswith("(400, param: max_tokens)")
    chat.assert_everything_came_from_the_server()


def test_on_a_phone(open_page):
    chat = open_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = chat.page
    # Without a key the settings unfold where the key goes; then they fold away under a button,
    # and the conversation and the message box take the screen.
    expect(page.locator("#banner")).to_contain_text("(401, invalid_api_key)")
    expect(page.locator("#settings")).to_be_visible()
    chat.enter_key()
    chat.wait_for_models()
    chat.settings(temperature=0, max_tokens=20)
    page.click("#toggle-settings")
    expect(page.locator("#settings")).to_be_hidden()
    expect(page.locator("#toggle-settings")).to_have_attribute("aria-expanded", "false")
    page.click("#toggle-settings")
    expect(page.locator("#settings")).to_be_visible()
    page.click("#toggle-settings")
    expect(page.locator("#settings")).to_be_hidden()

    reply = chat.ask("What is the capital of France?")
    assert chat.wait_until_finished(reply) == "done"
    assert "Paris" in reply.locator(".content").inner_text()
    width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing sticks out sideways
    for selector in ("#prompt", "#send", ".message.user", ".message.assistant", "#toggle-settings"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, selector
        assert box["y"] + box["height"] <= PHONE["height"], selector
    prompt = page.locator("#prompt").bounding_box()
    assert prompt["width"] > width / 2
    assert prompt["y"] > PHONE["height"] * 0.8  # the message box sits at the bottom, under the thumb
    assert page.locator("#new-chat").bounding_box()["height"] < 50  # the top bar's buttons fit on one line
    page.screenshot(path=str(SCREENSHOTS / "playground-phone.png"))
    chat.assert_everything_came_from_the_server()


def test_the_key_is_remembered_only_when_asked(open_page):
    chat = open_page()
    page = chat.page
    chat.enter_key()
    chat.wait_for_models()
    stored = "() => Object.values(localStorage).join(' ')"
    assert API_KEY not in page.evaluate(stored)
    page.reload()
    expect(page.locator("#api-key")).to_have_value("")  # kept in memory only: gone with the page
    expect(page.locator("#banner")).to_contain_text("(401, invalid_api_key)")

    chat.enter_key()
    page.check("#remember-key")
    chat.wait_for_models()
    assert API_KEY in page.evaluate(stored)
    page.reload()
    expect(page.locator("#api-key")).to_have_value(API_KEY)
    chat.wait_for_models()
    expect(page.locator("#banner")).to_be_hidden()
    page.uncheck("#remember-key")
    assert API_KEY not in page.evaluate(stored)
    chat.assert_everything_came_from_the_server()
