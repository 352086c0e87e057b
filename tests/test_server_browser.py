"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
type a query, upload an image, drop one, pick a task, "more like this", an error; each
time the cards show what the API answers. Screenshots go to the test's tmp dir (and to
$MMSEARCH_UI_SCREENSHOT when set, e.g. docs/ui.png)."""
import base64
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from test_server_support import ThreadServer, chromium_or_skip, draw, png_bytes, require_server_deps, shared_index

require_server_deps()

import httpx  # noqa: E402

from mmsearch.server import create_app  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir, tiny_encoder):
    chromium_or_skip()
    app = create_app(shared_index(tmp_path_factory, tiny_dir), encoder=tiny_encoder("qwen2_vl"))
    with ThreadServer(app) as running:
        yield running


@pytest.fixture()
def page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_or_skip(), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 860}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(90_000)  # 2 shared cores: be patient
        page.outside, page.console_errors = [], []
        page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:"))
                else page.outside.append(r.url))
        page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        try:
            yield page
        finally:
            context.close()


def api_ids(server, **body):
    answer = httpx.post(server.url + "/search", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return [h["id"] for h in answer.json()["hits"]]


def card_ids(page):
    return page.eval_on_selector_all(".card .id", "nodes => nodes.map(n => n.textContent)")


def run_search(page, action):
    """Do `action` (which starts a search) and wait for its results to be rendered."""
    action()
    page.wait_for_function("() => /results in|: /.test(document.getElementById('status').textContent)")


def wait_thumbnails(page):
    """Every thumbnail in the viewport has loaded (those below it load lazily)."""
    page.wait_for_function("() => [...document.querySelectorAll('.card .thumb img:not([hidden])')]"
                           ".filter(i => i.getBoundingClientRect().top < window.innerHeight)"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def test_search_upload_drop_task_more_like_this(server, page, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#task option').length > 10")
    assert "28 items" in page.text_content("#index-info")

    # 1. a text query, typed
    page.fill("#q", "a red circle")
    run_search(page, lambda: page.press("#q", "Enter"))
    assert card_ids(page) == api_ids(server, text="a red circle", k=20)
    assert page.text_content("#status").startswith("20 results")
    wait_thumbnails(page)
    page.screenshot(path=str(tmp_path / "text-query.png"), full_page=True)

    # 2. an uploaded image with text (a composed query)
    picture = tmp_path / "query.png"
    draw("circle", (40, 90, 200), size=120).save(picture)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#preview[src^='data:image/png']")
    page.fill("#q", "the same shape, in purple")
    run_search(page, lambda: page.click("#go"))
    want = api_ids(server, image=base64.b64encode(picture.read_bytes()).decode(), text="the same shape, in purple",
                   k=20)
    assert card_ids(page) == want
    wait_thumbnails(page)
    shot = tmp_path / "image-query.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("MMSEARCH_UI_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["MMSEARCH_UI_SCREENSHOT"]))

    # 3. "more like this" on the second result
    second = card_ids(page)[1]
    run_search(page, lambda: page.locator(".card .more").nth(1).click())
    assert "more like " + second in page.text_content("#status")
    assert card_ids(page) == api_ids(server, like=second, k=20)
    assert page.is_hidden("#drop-full")  # the uploaded image was cleared

    # 4. an image dropped on the drop zone, then a task
    data = base64.b64encode(png_bytes(draw("square", (46, 160, 67), size=64))).decode()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.wait_for_selector("#preview[src^='data:image/png']")
    assert "dropped.png" in page.text_content("#preview-label")
    page.select_option("#task", "i2i")
    page.fill("#q", "")
    run_search(page, lambda: page.click("#go"))
    assert card_ids(page) == api_ids(server, image=data, task="i2i", k=20)

    # 5. an error from the server is shown, not swallowed
    page.evaluate("() => { const o = document.createElement('option'); o.value = o.textContent = '5000';"
                  " document.getElementById('k').appendChild(o); document.getElementById('k').value = '5000'; }")
    run_search(page, lambda: page.click("#go"))
    assert "validation_error" in page.text_content("#status") and "max_k" in page.text_content("#status")
    assert page.get_attribute("#status", "class") == "error"

    assert page.outside == [], f"the page contacted other hosts: {page.outside}"
    assert [e for e in page.console_errors if "422" not in e] == []


def test_metadata_shown_as_text_not_html(server, page):
    page.goto(server.url + "/")
    page.fill("#q", "<img src=x onerror=alert(1)>")
    run_search(page, lambda: page.press("#q", "Enter"))
    assert page.locator(".card").count() == 20
    first = page.locator(".card").first
    first.locator("summary").click()
    assert "shape" in first.locator("dl").inner_text() or "modality" in first.locator("dl").inner_text()
    assert page.evaluate("() => document.querySelectorAll('#results script, #results [onerror]').length") == 0


def test_large_photo_is_scaled_down_before_upload(server, page, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (3000, 1000), (30, 120, 200)).save(photo)
    page.goto(server.url + "/")
    requests = []
    page.on("request", lambda r: requests.append(r.post_data or "") if r.url.endswith("/search") else None)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#preview[src^='data:image/jpeg']")
    assert "sent as 2048×683" in page.text_content("#preview-label")
    run_search(page, lambda: page.click("#go"))
    assert page.text_content("#status").startswith("20 results")
    image = base64.b64decode(json.loads(requests[-1])["image"].split(",", 1)[1])
    assert Image.open(io.BytesIO(image)).size == (2048, 683)


def test_modality_selector_and_more_like_this_without_the_item(server, page):
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#modality option').length > 1")
    options = page.eval_on_selector_all("#modality option", "os => os.map(o => [o.value, o.textContent])")
    assert options == [["", "everything"], ["has:image", "has an image (22)"], ["has:text", "has text (8)"],
                       ["text", "text only (6)"], ["image", "images only (20)"], ["image,text", "image + text (2)"]]
    page.fill("#q", "a red circle")
    for value, filt in (("image", {"modality": "image"}), ("has:text", {"modality": {"has": "text"}})):
        run_search(page, lambda: page.select_option("#modality", value))  # changing it searches again
        assert card_ids(page) == api_ids(server, text="a red circle", k=20, filter=filt)
        badges = set(page.eval_on_selector_all(".card .badge", "nodes => nodes.map(n => n.textContent)"))
        assert badges == ({"image"} if value == "image" else {"text", "image,text"})
    first = card_ids(page)[0]
    run_search(page, lambda: page.locator(".card .more").nth(0).click())
    ids = card_ids(page)
    assert first not in ids and len(ids) == 7  # 8 items with text, less the item itself
    assert ids == api_ids(server, like=first, k=20, filter={"modality": {"has": "text"}})
    assert page.outside == [] and page.console_errors == []
