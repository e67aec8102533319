"""Two raters complete the 6-case study in headless Chromium: one by mouse, one by keyboard only.

Checked on the way: screenshots of both page kinds show each case image (compared pixel-wise with
the decoded source) and every findings text; the side-by-side page's source and every network
response it caused (redirects, HTML, script, style sheet, images) hold no model name; report HTML
stays inert; the stored answers are exactly what was done in the browser.
"""

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from medpalm.rater import db
from tests.support import rater as R

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.slow


@pytest.fixture
def driver():
  if not (os.path.exists(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    print(
        f"SKIP reason: {CHROMIUM} or {CHROMEDRIVER} is absent (apt-get install chromium "
        "chromium-driver; .ci/run does it)"
    )
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} absent: apt-get install chromium chromium-driver")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in (
      "--headless=new",
      "--no-sandbox",
      "--disable-dev-shm-usage",
      "--disable-gpu",
      "--window-size=1400,1900",
      "--force-device-scale-factor=1",
  ):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
  d = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  d.set_page_load_timeout(30)
  d.execute_cdp_cmd("Network.enable", {})
  yield d
  d.quit()


def _expected(db_url, study_files):
  """{case id: (set of report texts, [decoded source images uint8[H, W, 3]])}."""
  from tasks import images

  cases = {}
  for line in (study_files / "cases.jsonl").read_text().splitlines():
    rec = json.loads(line)
    paths = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
    cases[rec["id"]] = [images.decode_image(study_files / p) for p in paths]
  engine = db.make_engine(db_url)
  out = {}
  with db.sessionmaker(engine)() as s:
    for case in s.scalars(sa.select(db.Case)):
      texts = set(s.scalars(sa.select(db.Report.text).where(db.Report.case_id == case.id)))
      out[case.id] = (texts, cases[case.key])
  engine.dispose()
  return out


def _wait_for_next_page(driver, current):
  """The submit navigates asynchronously: wait until the next page has loaded."""
  from selenium.webdriver.support.ui import WebDriverWait

  WebDriverWait(driver, 30, poll_frequency=0.05).until(
      lambda d: d.current_url != current
      and d.execute_script("return document.readyState") == "complete"
  )


def _case_id(driver):
  return int(driver.current_url.split("/case/")[1].split("/")[0])


def _check_rendering(driver, expected, tmp_path, name):
  """Screenshot the page; the image areas match the source, each report's text area has ink."""
  from selenium.webdriver.common.by import By

  texts, sources = expected[_case_id(driver)]
  is_sbs = driver.current_url.endswith("/sbs")
  shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".text")]
  want = texts if is_sbs else texts - _reference_texts
  assert set(shown) == want and len(shown) == len(want)
  png = driver.get_screenshot_as_png()
  (tmp_path / f"{name}.png").write_bytes(png)
  shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)
  imgs = driver.find_elements(By.CSS_SELECTOR, "img.case-image")
  assert len(imgs) == len(sources)
  for el, src in zip(imgs, sources):
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", el)
    r = el.rect
    x, y, w, h = (int(round(r[k])) for k in ("x", "y", "width", "height"))
    assert w > 100 and y + h <= shot.shape[0], f"image not fully on screen: {r}"
    crop = shot[y : y + h, x : x + w]
    ref = np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR)).astype(np.float64)
    diff = np.abs(crop - ref).mean()
    assert diff < 12, f"rendered image differs from its source by {diff:.1f} grey levels"
  for el in driver.find_elements(By.CSS_SELECTOR, ".text"):
    r = el.rect
    x, y, w, h = (int(round(r[k])) for k in ("x", "y", "width", "height"))
    assert h > 5 and y + h <= shot.shape[0], f"findings text not on screen: {r}"
    area = shot[y : y + h, x : x + w]
    assert (area.min(axis=2) < 100).mean() > 0.01, "findings text area has no ink"


_reference_texts = set()


def _check_blinding(driver):
  """No model name in the page source, nor in any response since the last check."""
  assert driver.execute_script("return window.__pwned") is None
  source = driver.page_source.lower()
  responses = []
  for entry in driver.get_log("performance"):
    msg = json.loads(entry["message"])["message"]
    if msg["method"] == "Network.responseReceived":
      responses.append((msg["params"]["requestId"], msg["params"]["response"]))
    elif msg["method"] == "Network.requestWillBeSent" and "redirectResponse" in msg["params"]:
      responses.append((None, msg["params"]["redirectResponse"]))
  kinds = set()
  for request_id, response in responses:
    blob = (response["url"] + json.dumps(response.get("headers", {}))).lower()
    if request_id is not None and response["status"] == 200:
      body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request_id})
      data = body["body"]
      data = base64.b64decode(data) if body["base64Encoded"] else data.encode()
      blob += data.decode("latin-1").lower()
      kinds.add(response["mimeType"])
    for secret in R.BLINDING_SECRETS:
      assert secret.lower() not in blob, f"{secret!r} in the response of {response['url']}"
  for secret in R.BLINDING_SECRETS:
    assert secret.lower() not in source, f"{secret!r} in the page source"
  return kinds


def _do_mouse(driver, page, record):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  img = driver.find_element(By.CSS_SELECTOR, "img.case-image")
  width = img.size["width"]
  driver.find_element(By.CSS_SELECTOR, ".zoom-in").click()
  assert img.size["width"] > width  # zoomed
  driver.find_element(By.CSS_SELECTOR, ".zoom-reset").click()
  if driver.current_url.endswith("/sbs"):
    cards = driver.find_elements(By.CSS_SELECTOR, ".card")
    before = [c.get_attribute("data-item") for c in cards]
    # Drag the last card above the first.
    ActionChains(driver).click_and_hold(cards[-1]).move_to_element_with_offset(
        cards[0], 0, -cards[0].size["height"] // 2 + 3
    ).pause(0.05).release().perform()
    after = [c.get_attribute("data-item") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    assert after == before[-1:] + before[:-1], (before, after)
    assert driver.find_element(By.ID, "ranking").get_attribute("value") == ",".join(after)
    record[driver.current_url] = after
  else:
    driver.find_element(By.CSS_SELECTOR, ".report .add-error").click()
    row = driver.find_element(By.CSS_SELECTOR, ".report .error-row")
    Select(row.find_element(By.CSS_SELECTOR, "[data-field=type]")).select_by_value("severity")
    Select(row.find_element(By.CSS_SELECTOR, "[data-field=sig]")).select_by_value("significant")
    record[driver.current_url] = [("severity", "significant")]
  driver.find_element(By.ID, "submit").click()


def _tab_to(driver, match, limit=40):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.keys import Keys

  for _ in range(limit):
    ActionChains(driver).send_keys(Keys.TAB).perform()
    el = driver.switch_to.active_element
    if match(el):
      return el
  raise AssertionError("Tab never reached the element")


def _do_keyboard(driver, page, record):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys

  def keys(*k):
    ActionChains(driver).send_keys(*k).perform()

  def has_class(name):
    return lambda el: name in (el.get_attribute("class") or "").split()

  img = driver.find_element(By.CSS_SELECTOR, "img.case-image")
  width = img.size["width"]
  _tab_to(driver, has_class("frame"))
  keys("+")
  assert img.size["width"] > width  # zoomed by keyboard
  keys("0")
  if driver.current_url.endswith("/sbs"):
    before = [c.get_attribute("data-item") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    _tab_to(driver, has_class("card"))  # the first card
    keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN)  # first → third
    after = [c.get_attribute("data-item") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    assert after == before[1:3] + before[:1] + before[3:], (before, after)
    record[driver.current_url] = after
  else:
    _tab_to(driver, has_class("add-error"))
    keys(Keys.ENTER)  # adds a row and focuses its type
    keys("l", Keys.TAB, "n")  # type "location", significance "not clinical"
    _tab_to(driver, lambda el: el.get_attribute("name") == "om1_sig")
    keys(Keys.ARROW_UP)
    record[driver.current_url] = [("location", "nonclinical")]
  _tab_to(driver, lambda el: el.get_attribute("id") == "submit")
  keys(Keys.ENTER)


def _stored(db_url, rater):
  """{page URL tail: letters best first (sbs) or report 1's errors (independent)}, and om1 sums."""
  engine = db.make_engine(db_url)
  out, om = {}, 0
  with db.sessionmaker(engine)() as s:
    rows = s.execute(
        sa.select(db.Assignment, db.Answer)
        .join(db.Answer, db.Answer.assignment_id == db.Assignment.id)
        .join(db.Rater, db.Assignment.rater_id == db.Rater.id)
        .where(db.Rater.name == rater)
    ).all()
    for a, answer in rows:
      order = json.loads(a.order_json)
      key = f"/case/{a.case_id}/{a.kind}"
      if a.kind == db.SBS:
        ranked = sorted(answer.ranks, key=lambda r: r.rank)
        out[key] = ["ABCDEFGH"[order.index(r.report_id)] for r in ranked]
      else:
        out[key] = sorted(
            (e.error_type, e.significance) for e in answer.errors if e.report_id == order[0]
        )
        om += sum(g.significant_omissions for g in answer.grades if g.report_id == order[0])
  engine.dispose()
  return out, om


def test_two_raters_complete_the_study_by_mouse_and_by_keyboard(
    driver, study, study_files, tmp_path
):
  url, tokens, tmp = study
  expected = _expected(url, study_files)
  engine = db.make_engine(url)
  with engine.connect() as conn:
    _reference_texts.update(
        conn.execute(sa.select(db.Report.text).where(db.Report.source == db.REFERENCE)).scalars()
    )
  engine.dispose()
  with R.serving(url, tmp / "server.log") as server:
    for rater, act in (("rater-one", _do_mouse), ("rater-two", _do_keyboard)):
      driver.delete_all_cookies()
      driver.get_log("performance")  # drop what came before
      driver.get(server.url(f"/r/{tokens[rater]}"))
      queue = R.queue_urls(url, rater, tokens[rater])
      record, shot = {}, set()
      for step, page in enumerate(queue):
        assert driver.current_url == server.url(page), (step, driver.current_url, page)
        kind = page.rsplit("/", 1)[1]
        assert f"{step} / {len(queue)} done" in driver.find_element("id", "progress").text
        if kind not in shot:
          _check_rendering(driver, expected, tmp_path, f"{rater}-{kind}")
          shot.add(kind)
        kinds = _check_blinding(driver)
        if step == 0:  # the first page's responses: redirect target HTML, script, style, image
          assert {"text/html", "application/javascript", "text/css", "image/png"} <= {
              k.replace("text/javascript", "application/javascript") for k in kinds
          }, kinds
        act(driver, page, record)
        _wait_for_next_page(driver, server.url(page))
      assert driver.current_url == server.url(f"/r/{tokens[rater]}/done")
      assert f"All {len(queue)} pages are done" in driver.find_element("id", "finished").text
      stored, om = _stored(url, rater)
      assert len(stored) == len(record) == len(queue)
      for full_url, did in record.items():
        key = "/case/" + full_url.split("/case/")[1]
        assert stored[key] == sorted(did) if "independent" in key else stored[key] == did
      assert om == (0 if rater == "rater-one" else len([k for k in stored if "independent" in k]))
  for name in ("rater-one-sbs", "rater-one-independent", "rater-two-sbs", "rater-two-independent"):
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
