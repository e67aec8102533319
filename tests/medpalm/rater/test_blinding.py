"""No model name reaches a rater: every page, redirect and subresource a rater can fetch."""

import re

import pytest
import requests

from tests.support import rater as R

pytestmark = pytest.mark.slow


def _assert_blind(response, what):
  blob = (response.url + str(dict(response.headers))).lower() + response.content.decode(
      "latin-1"
  ).lower()
  for secret in R.BLINDING_SECRETS:
    assert secret.lower() not in blob, f"{secret!r} in {what} ({response.url})"


def test_no_model_name_in_any_rater_response(study):
  url, tokens, tmp = study
  with R.serving(url, tmp / "server.log") as server:
    checked = set()
    for rater in R.RATERS:
      s = requests.Session()
      r = s.get(server.url(f"/r/{tokens[rater]}"))
      for hop in r.history:  # the 303 to the first page
        _assert_blind(hop, "a redirect")
      for page in R.queue_urls(url, rater, tokens[rater]):
        r = s.get(server.url(page))
        assert r.status_code == 200
        _assert_blind(r, "a page")
        for ref in re.findall(r'(?:src|href)="(/[^"]+)"', r.text):
          sub = s.get(server.url(ref))
          assert sub.status_code == 200, ref
          _assert_blind(sub, "a subresource")
          checked.add(ref.rsplit(".", 1)[-1])
        post = R.complete_page(s, server, page)
        _assert_blind(post, "a submit response")
      done = s.get(server.url(f"/r/{tokens[rater]}/done"))
      _assert_blind(done, "the end page")
    assert {"js", "css", "png"} <= checked
    # Sanity check of the check itself: the admin export names the models.
    export = requests.get(
        server.url("/admin/export"), headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    assert all(m in export.text for m in R.MODELS)
