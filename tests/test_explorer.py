"""The explorer page in a real headless browser (Debian's Chromium and ChromeDriver, driven by
Selenium; `make test` installs them when missing): typed histories give the gRPC client's answer,
a publish shows up as a new version, and a screenshot is kept."""

import os
import shutil
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from crossrec import schema
from serving.client import CrossrecClient
from tests.test_serving import history_of

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("CROSSREC_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".runs" / "artifacts"))


def _browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium and ChromeDriver are missing: `make browser` installs Debian's chromium and "
                    "chromium-driver (make test does it on its own)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # explicit paths: no download


@pytest.fixture
def explorer(tiny_pipeline, tiny_exported, tmp_path):
    from crossrec.data.loaders import load_dataset
    from serving.explorer import ExplorerData
    from serving.models import ModelManager, ModelSpec
    from serving.server import Server, ServerOptions, free_port

    config, _, _, _ = tiny_pipeline
    root = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2], root)
    dataset = load_dataset(config.data).clean()
    manager = ModelManager([ModelSpec(n, root / n) for n in ("recommender", "retrieval")])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0.2, ui=True,
                                           ui_data=ExplorerData(dataset.items, dataset.interactions, "tiny"))).start()
    yield server, root, dataset
    server.stop()


def _ask(driver, history, domain, version=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    box = driver.find_element(By.ID, "history")
    box.clear()
    box.send_keys("\n".join(f"{d}:{i}" for d, i in history))
    Select(driver.find_element(By.ID, "target-domain")).select_by_value(domain)
    if version is not None:
        Select(driver.find_element(By.ID, "version")).select_by_value(str(version))
    before = driver.find_element(By.TAG_NAME, "body").get_attribute("data-answered")
    driver.find_element(By.ID, "recommend").click()
    WebDriverWait(driver, 90).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answered") not in (None, before)
        or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "error" not in driver.find_element(By.ID, "status").get_attribute("class"), \
        driver.find_element(By.ID, "status").text

    def ids(list_id):  # read in one script call: the page may re-render the list between element lookups
        return driver.execute_script(
            f"return Array.from(document.querySelectorAll('#{list_id} li')).map(li => li.dataset.itemId)")

    return ids("served-list"), ids("retrieval-list")


def _feed(driver, n=None, sliders=None):
    """The page's feed as (domain, item_id): by the button, or by moving ``sliders`` while a feed
    is on show (the page asks again by itself)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    body = driver.find_element(By.TAG_NAME, "body")
    before = body.get_attribute("data-fed")
    if n is not None:
        box = driver.find_element(By.ID, "feed-n")
        box.clear()
        box.send_keys(str(n))
    if sliders:  # set them all, then one change event: one request
        for name, value in sliders.items():
            driver.execute_script("document.getElementById(arguments[0]).value = arguments[1];", name, value)
        driver.execute_script("document.getElementById(arguments[0]).dispatchEvent(new Event('change'));", name)
    else:
        driver.find_element(By.ID, "feed").click()
    WebDriverWait(driver, 90).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-fed") not in (None, before)
        and d.find_element(By.ID, "diversity-value").text  # the sliders' labels were drawn
        or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "error" not in driver.find_element(By.ID, "status").get_attribute("class"), \
        driver.find_element(By.ID, "status").text
    return [tuple(x) for x in driver.execute_script(
        "return Array.from(document.querySelectorAll('#feed-list li')).map(li => [li.dataset.domain, li.dataset.itemId])")]


def test_the_page_answers_like_the_grpc_client_and_follows_a_publish(explorer, tiny_pipeline, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ranking.train import train_ranking
    from serving.export import export_models

    server, root, dataset = explorer
    config, run, retrieval_dir, ranking_dir = tiny_pipeline
    _, histories, domains = history_of(run, 6)
    history, domain = next((h, d) for h, d in zip(histories, domains, strict=True) if len(h) >= 2)
    with CrossrecClient(f"127.0.0.1:{server.port}") as client:
        expected = [r["item_id"] for r in client.recommend(history, domain, k=10)]
        expected_retrieval = [r["item_id"] for r in client.retrieve(history, domain, k=10)]

    driver = _browser()
    try:
        driver.get(f"http://127.0.0.1:{server.rest_port}/ui")
        WebDriverWait(driver, 90).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        served, two_tower = _ask(driver, history, domain)
        assert served == expected and two_tower == expected_retrieval
        # titles and the served explanation are on the page
        first = driver.find_element(By.CSS_SELECTOR, "#served-list li")
        title = dataset.items.set_index([schema.DOMAIN, schema.ITEM_ID]).loc[(domain, expected[0]), schema.TITLE]
        assert title in first.text and "because you liked" in first.text
        # items in one list only are marked; a fully known history shows no warning
        marked = driver.execute_script(
            "return Array.from(document.querySelectorAll('#served-list li.only-here')).map(li => li.dataset.itemId)")
        assert marked == [i for i in expected if i not in expected_retrieval]
        assert not driver.find_element(By.ID, "history-note").is_displayed()
        # the feed view: the sliders start at the defaults, and moving them asks again
        with CrossrecClient(f"127.0.0.1:{server.port}") as client:
            feed_default = [(r["domain"], r["item_id"]) for r in client.feed(history, n=8)]
            feed_plain = [(r["domain"], r["item_id"]) for r in client.feed(history, n=8, diversity=0, calibration=0)]
        assert _feed(driver, n=8) == feed_default
        assert _feed(driver, sliders={"diversity": 0, "calibration": 0}) == feed_plain
        assert "domains in the feed:" in driver.find_element(By.ID, "feed-shares").text
        assert driver.find_element(By.ID, "diversity-value").text == "0.00"  # the labels say what was asked
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "explorer_feed.png"))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(ARTIFACTS / "explorer.png"))
        # a history of ids the model does not know is said to be one, not served silently
        _ask(driver, [(domain, "no-such-item-1"), (domain, "no-such-item-2")], domain)
        note = driver.find_element(By.ID, "history-note")
        assert note.is_displayed() and "None of the 2 history items is known to the model" in note.text

        # publish version 2 of the recommender: a ranker trained without the towers' score as its base
        # (on tiny data a ranker on that base keeps the towers' order, and v2 would look like v1)
        other = replace(config, ranking=replace(config.ranking, residual_on_retrieval=False))
        train_ranking(other, retrieval_dir, tmp_path / "ranking_v2", progress=False)
        export_models(retrieval_dir, root, ranking_dir=tmp_path / "ranking_v2", config=other, models=["recommender"],
                      progress=False)
        WebDriverWait(driver, 90).until(lambda d: server.manager.get("recommender").version == 2)
        with CrossrecClient(f"127.0.0.1:{server.port}") as client:
            expected_v2 = [r["item_id"] for r in client.recommend(history, domain, k=10, version=2)]
        assert expected_v2 != expected  # a different model: the page must show the change
        driver.find_element(By.ID, "refresh-versions").click()
        WebDriverWait(driver, 90).until(lambda d: "2" in d.execute_script(
            "return Array.from(document.querySelectorAll('#version option')).map(o => o.value)"))
        served_v2, _ = _ask(driver, history, domain, version=2)
        assert served_v2 == expected_v2
    finally:
        driver.quit()


def test_the_explorer_api_searches_items_and_users_and_errors_in_json(explorer):
    import json

    server, _, dataset = explorer
    base = f"http://127.0.0.1:{server.rest_port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, info = get("/ui/api/info")
    assert status == 200 and info["domains"] == ["books", "kitchen", "movies"] and info["users"] > 0
    title = str(dataset.items[schema.TITLE].iloc[0])
    status, found = get(f"/ui/api/items?q={urllib.parse.quote(title[:6].lower())}&limit=5")
    assert status == 200 and 0 < len(found) <= 5 and all(title[:6].lower() in f["title"].lower() for f in found)
    status, users = get("/ui/api/users?limit=3")
    assert status == 200 and len(users) == 3
    status, user = get(f"/ui/api/users/{users[0]}")
    assert status == 200 and user["history"] and {"domain", "item_id", "title"} <= set(user["history"][0])
    status, missing = get("/ui/api/users/nobody-at-all")
    assert status == 404 and "nobody-at-all" in missing["error"]
    status, page = 200, urllib.request.urlopen(base + "/ui", timeout=30).read().decode()
    assert "crossrec explorer" in page and "/ui/static/explorer.js" in page


def test_item_search_finds_items_added_since_training_and_their_titles(explorer, monkeypatch):
    """An added book's exact title found it nothing (the page read the training data only)."""
    import json

    from serving.explorer import AddedItems

    server, _, _ = explorer
    added = {("kitchen", "KI-NEW-1"): {"title": "Stoneware Mixing Bowl", "after_version": 1},
             ("books", "BO-NEW-7"): {"title": "A Brand New Novel", "after_version": 1}}
    monkeypatch.setattr(AddedItems, "served", lambda self: (2, added))
    base = f"http://127.0.0.1:{server.rest_port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=30) as response:
            return json.loads(response.read())

    assert get("/ui/api/items?q=Stoneware") == [{"domain": "kitchen", "item_id": "KI-NEW-1",
                                                  "title": "Stoneware Mixing Bowl", "added": True}]
    assert get("/ui/api/items?q=a%20brand%20new%20novel&domain=books")[0]["item_id"] == "BO-NEW-7"
    assert get("/ui/api/items?q=Stoneware&domain=books") == []  # the domain filter holds for added items too
    assert get("/ui/api/titles?keys=kitchen:KI-NEW-1")["kitchen:KI-NEW-1"] == "Stoneware Mixing Bowl"
    assert get("/ui/api/items?q=no-such-thing-anywhere") == []
    script = (Path(__file__).resolve().parents[1] / "serving" / "explorer_static" / "explorer.js").read_text()
    assert "no item matches" in script  # an empty search says so


def test_the_page_says_what_a_score_and_a_because_share_mean():
    page = (Path(__file__).resolve().parents[1] / "serving" / "explorer_static" / "index.html").read_text()
    legend = page.split('id="score-legend"')[1].split("</p>")[0]
    assert "engagement logit" in legend and "probability" in legend and "(32%)" in legend
    assert "not always the score's" in legend


def test_the_empty_page_says_what_to_do_first_and_a_long_history_scrolls_in_its_box():
    static = Path(__file__).resolve().parents[1] / "serving" / "explorer_static"
    page, style = (static / "index.html").read_text(), (static / "explorer.css").read_text()
    assert 'id="first-step"' in page and "Start here" in page
    assert page.index('id="first-step"') < page.index('id="history"') < page.index('id="recommend"')
    history_rule = style.split(".history {")[1].split("}")[0]
    assert "max-height" in history_rule and "overflow: auto" in history_rule
