"""The web app's REST API as the client uses it (``intunnel login``, ``--name``, ``tunnels``).

Standard library only (the client installs nothing else): one JSON request per call over
``urllib``, a personal API token as ``Authorization: Bearer``, and the API's one error
format (``{"error": true, "message", "code"}``) turned into ``ApiError`` with its message.
"""

from __future__ import annotations

import json
import ssl
from typing import Optional

from .. import __version__

TIMEOUT = 15.0  # seconds for one API call: the web app answers in milliseconds when it is up
MAX_ANSWER = 4 * 1024 * 1024  # bytes read from one answer (a list of tunnels is far smaller)


class ApiError(Exception):
    """The API said no (``status``/``code`` from its answer) or could not be reached
    (``status`` 0): ``str()`` is one line to show the user."""

    def __init__(self, message: str, status: int = 0, code: str = "", answer: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.answer = answer or {}  # the error's whole JSON object (e.g. the relay's web_url)


class Api:
    def __init__(self, base_url: str, token: Optional[str] = None, insecure: bool = False,
                 timeout: float = TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._context = None
        if insecure and self.base_url.startswith("https:"):
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: Optional[dict] = None) -> dict:
        return self.call("POST", path, {} if body is None else body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)

    def call(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        # urllib.request brings http.client and the email package (about 3 MiB resident): imported
        # by the first call, so a client given its token (no API call) never carries them.
        import urllib.error
        import urllib.request
        headers = {"Accept": "application/json", "User-Agent": f"intunnel/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as resp:
                return _json(resp.read(MAX_ANSWER + 1), resp.status, self.base_url)
        except urllib.error.HTTPError as e:
            try:
                answer = _json(e.read(MAX_ANSWER + 1), e.code, self.base_url)
            except ApiError:
                answer = {}
            message = answer.get("message") if isinstance(answer.get("message"), str) else ""
            raise ApiError(message or f"{self.base_url} answered {e.code} {e.reason}",
                           e.code, str(answer.get("code") or ""), answer) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ApiError(f"could not reach {self.base_url}: {reason}") from None


def _json(raw: bytes, status: int, base_url: str) -> dict:
    if len(raw) > MAX_ANSWER:
        raise ApiError(f"{base_url} answered more than {MAX_ANSWER} bytes", status)
    try:
        answer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(f"{base_url} did not answer JSON (is it the InTunnel web app?)", status) from None
    if not isinstance(answer, dict):
        raise ApiError(f"{base_url} answered JSON that is not an object", status)
    return answer
