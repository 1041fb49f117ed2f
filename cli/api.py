"""The portal's REST API (/api/v1/), over requests, with its errors turned into CliErrors.

The token goes in the `Authorization: Token <key>` header only, never in a URL; the pages of a
list are fetched from the configured URL with the cursor of the portal's `next` link, so the
header never follows a link to another host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from cli.errors import FAILED, CliError, Invalid, NotFound, Unreachable

LOG_PAGE = 1000
MAX_PAGE = 500


def user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"portalctl/{version('cluster-portal')}"
    except Exception:
        return "portalctl"


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return ""


THROTTLED_TRIES = 4
MAX_THROTTLE_WAIT_S = 30


def _retry_after(response: requests.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", 1)), 0.0)
    except ValueError:
        return 1.0


class Api:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}",
                                     "Accept": "application/json",
                                     "User-Agent": user_agent()})

    # -- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One call; throttled (429, nothing was done), it waits as the portal says and tries
        again, a few times."""
        for _ in range(THROTTLED_TRIES):
            response = self._send(method, path, **kwargs)
            if response.status_code != 429:
                return response
            wait = _retry_after(response)
            if wait > MAX_THROTTLE_WAIT_S:
                break
            time.sleep(wait)
        raise CliError(f"the portal is throttling this token (429): try again in "
                       f"{_retry_after(response):g} s")

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout,
                                            **kwargs)
        except requests.exceptions.Timeout:
            raise Unreachable(f"the portal at {self.url} did not answer within "
                              f"{self.timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            why = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
            raise Unreachable(f"cannot reach the portal at {self.url}: {why}") from None
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"cannot talk to the portal at {self.url}: {exc}") from None
        if response.status_code == 401:
            raise CliError(f"the portal at {self.url} refused the token (401): "
                           "run `portalctl login` with a valid token")
        if response.status_code == 403:
            raise CliError(_detail(response) or "permission denied (403)")
        if response.status_code == 400:
            raise Invalid(self.json(response))
        if response.status_code >= 500:
            raise CliError(f"the portal failed: HTTP {response.status_code} for {method} {path}")
        return response

    def json(self, response: requests.Response):
        try:
            return response.json()
        except ValueError:
            raise CliError(f"the portal at {self.url} answered HTTP {response.status_code} "
                           f"with something that is not JSON (is the URL right?)") from None

    def get(self, path: str, **params):
        response = self.request("GET", path, params=params or None)
        if response.status_code == 404:
            raise NotFound(_detail(response) or f"not found: {path}")
        if response.status_code != 200:
            raise CliError(f"unexpected HTTP {response.status_code} for GET {path}")
        return self.json(response)

    # -- calls ---------------------------------------------------------------------------------

    def kinds(self) -> list[dict]:
        return self.get("/api/v1/kinds/")

    def nodes(self) -> list[dict]:
        return self.get("/api/v1/nodes/")

    def usage(self, **params) -> dict:
        return self.get("/api/v1/usage/", **params)

    def submit(self, spec: dict) -> dict:
        response = self.request("POST", "/api/v1/jobs/", json=spec)
        if response.status_code not in (200, 201):
            raise CliError(_detail(response) or
                           f"the portal answered HTTP {response.status_code} to the submission")
        return self.json(response)

    def job(self, job_id: str) -> dict:
        try:
            return self.get(f"/api/v1/jobs/{quote(str(job_id), safe='')}/")
        except NotFound:
            raise NotFound(f"no such job: {job_id}") from None

    def cancel(self, job_id: str) -> tuple[bool, dict]:
        """(True, the job) when the cancel was accepted, (False, the job) when it had ended."""
        response = self.request("POST", f"/api/v1/jobs/{quote(str(job_id), safe='')}/cancel/")
        if response.status_code == 404:
            raise NotFound(f"no such job: {job_id}")
        if response.status_code == 409:
            return False, self.job(job_id)
        if response.status_code != 202:
            raise CliError(f"unexpected HTTP {response.status_code} cancelling job {job_id}",
                           FAILED)
        return True, self.json(response)

    def log_lines(self, job_id: str, after: int = 0) -> Iterator[dict]:
        """Every log line after `after` (a line's `seq`), page by page."""
        path = f"/api/v1/jobs/{quote(str(job_id), safe='')}/logs/"
        while True:
            try:
                page = self.get(path, after=after, limit=LOG_PAGE)
            except NotFound:
                raise NotFound(f"no such job: {job_id}") from None
            lines = page.get("lines") or []
            yield from lines
            after = page.get("next_after", after)
            if len(lines) < LOG_PAGE:
                return

    def jobs(self, *, limit: int, page_size: int = 100, **filters) -> list[dict]:
        """Up to `limit` jobs, newest first, following the cursor pagination's `next`."""
        params = {k: v for k, v in filters.items() if v not in (None, "")}
        params["limit"] = max(1, min(limit, page_size, MAX_PAGE))
        jobs: list[dict] = []
        while len(jobs) < limit:
            page = self.get("/api/v1/jobs/", **params)
            jobs += page.get("results", [])
            if not page.get("next"):
                break
            # The cursor (and the filters) from `next`, asked of the URL we were given.
            params = dict(parse_qsl(urlsplit(page["next"]).query))
            params["limit"] = max(1, min(limit - len(jobs), page_size, MAX_PAGE))
        return jobs[:limit]

    # -- teams ---------------------------------------------------------------------------------

    def invite(self, team: str, username: str, role: str) -> dict:
        """Invite a user to a team (its admins): they join when they accept."""
        response = self.request("POST", f"/api/v1/teams/{quote(team, safe='')}/invitations/",
                                json={"username": username, "role": role})
        if response.status_code == 404:
            raise NotFound(f"no such team: {team}")
        if response.status_code != 201:
            raise CliError(f"unexpected HTTP {response.status_code} inviting {username}")
        return self.json(response)

    def invitations(self) -> list[dict]:
        return self.get("/api/v1/invitations/")

    def answer(self, invitation_id: str, accept: bool) -> dict | None:
        """Accept (the membership) or decline (None) an invitation of yours."""
        verb = "accept" if accept else "decline"
        response = self.request(
            "POST", f"/api/v1/invitations/{quote(str(invitation_id), safe='')}/{verb}/")
        if response.status_code == 404:
            raise NotFound(f"no such invitation: {invitation_id}")
        if response.status_code not in (200, 204):
            raise CliError(f"unexpected HTTP {response.status_code} for invitation "
                           f"{invitation_id}")
        return self.json(response) if accept else None
