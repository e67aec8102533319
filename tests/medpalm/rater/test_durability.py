"""SIGKILL mid-study: no answer that got its response is lost; raters resume; double submits."""

import signal
import threading
import time

import pytest
import requests

from tests.support import rater as R

pytestmark = pytest.mark.slow


def test_sigkill_restart_resume_and_double_submit(study):
  url, tokens, tmp = study
  one, two = tokens["rater-one"], tokens["rater-two"]
  queue_one = R.queue_urls(url, "rater-one", one)
  queue_two = R.queue_urls(url, "rater-two", two)
  s1, s2 = requests.Session(), requests.Session()
  server = R.Server(url, tmp / "server.log").start()
  for page in queue_one[:3]:
    assert R.complete_page(s1, server, page).status_code == 303
  # Rater one opens page 4 (its form and CSRF token) before the crash, submits after it.
  pending = s1.get(server.url(queue_one[3]))
  pending_data = R.answer_data(pending.text, queue_one[3])

  # Rater two submits page after page while the server is SIGKILLed.
  confirmed, stop = [], threading.Event()

  def submit_loop():
    for page in queue_two:
      if stop.is_set():
        return
      try:
        if R.complete_page(s2, server, page).status_code == 303:
          confirmed.append(page)
      except (requests.ConnectionError, AssertionError):
        return

  worker = threading.Thread(target=submit_loop)
  worker.start()
  deadline = time.monotonic() + 60
  while len(confirmed) < 3 and time.monotonic() < deadline and worker.is_alive():
    time.sleep(0.01)
  server.kill(signal.SIGKILL)
  stop.set()
  worker.join(30)
  assert len(confirmed) >= 3, "rater two's submissions did not get going"
  assert len(confirmed) < len(queue_two), "the kill came after rater two had finished"

  # Nothing that was confirmed is lost, and each rater's answers are a prefix of the queue.
  done_one = R.answered_urls(url, "rater-one", one)
  done_two = R.answered_urls(url, "rater-two", two)
  assert done_one == set(queue_one[:3])
  assert set(confirmed) <= done_two
  assert done_two == set(queue_two[: len(done_two)])
  before = R.answer_count(url)
  assert before == 3 + len(done_two)

  server = R.Server(url, tmp / "server2.log").start()
  try:
    r = s1.get(server.url(f"/r/{one}"), allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == queue_one[3]
    r = s2.get(server.url(f"/r/{two}"), allow_redirects=False)
    assert r.headers["location"] == queue_two[len(done_two)]
    # The form loaded before the crash still submits (the CSRF key lives in the database).
    r = s1.post(server.url(queue_one[3]), data=pending_data, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == queue_one[4]
    assert R.answer_count(url) == before + 1
    # Double submit, one after the other: 303 to the next page, nothing stored.
    r = s1.post(server.url(queue_one[3]), data=pending_data, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == queue_one[4]
    assert R.answer_count(url) == before + 1
    # Double submit at the same moment (two clicks): one answer stored.
    page = s1.get(server.url(queue_one[4])).text
    data = R.answer_data(page, queue_one[4])
    codes = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(
                s1.post(server.url(queue_one[4]), data=data, allow_redirects=False).status_code
            )
        )
        for _ in range(4)
    ]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert codes == [303] * 4
    assert R.answer_count(url) == before + 2
    assert R.answered_urls(url, "rater-one", one) == set(queue_one[:5])
  finally:
    server.kill(signal.SIGTERM)
