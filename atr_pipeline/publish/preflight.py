"""Before the first write: is there a FHIR R4 server at the base URL, and who is it?

In:  a ``ServerConfig`` and the request auth.
Out: ``ServerIdentity`` from ``GET [base]/metadata`` (the CapabilityStatement's FHIR version,
     software name/version, implementation description/url), recorded in the checkpoint so a
     resume can tell whether it talks to the same server.
Refused (nothing is sent):
  - ``ServerUnreachable``: nothing listening, DNS, TLS, timeouts; the message names host:port and
    the error in words ("connection refused"). Bounded by ``PREFLIGHT_TIMEOUT`` seconds.
  - ``NotAFhirServer``: an answer that is not a CapabilityStatement (404, HTML, other JSON), a FHIR
    version other than R4 (4.0.x), or credentials the server refuses (401/403).

Also ``describe_transport_error``: the words for a transport failure, shared with the loader's
stop messages so a dead server reads the same at preflight and mid-load.
"""

from __future__ import annotations

import errno
import ssl
import threading

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.server import ServerConfig

# Connect and read bounds of the metadata request, and a hard deadline for the whole of it: a DNS
# lookup (getaddrinfo) is not bounded by httpx's timeouts and can hang far longer on a dead resolver.
PREFLIGHT_TIMEOUT = 8.0
PREFLIGHT_DEADLINE = 9.5
R4_PREFIX = "4.0."
EXIT_UNREACHABLE = 3
EXIT_NOT_FHIR = 4


class ServerIdentity(BaseModel):
    """What a server says about itself; two answers with equal identities are taken as one server."""

    model_config = ConfigDict(frozen=True)

    base_url: str
    fhir_version: str = ""
    software: str = ""  # name and version
    implementation: str = ""  # description and url

    def label(self) -> str:
        return self.software or self.implementation or "unnamed FHIR server"


class ServerUnreachable(AtrError):
    exit_code = EXIT_UNREACHABLE


class NotAFhirServer(AtrError):
    exit_code = EXIT_NOT_FHIR


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


def describe_transport_error(exc: BaseException) -> str:
    """Plain words for a transport failure: "connection refused", "DNS lookup failed (...)", ..."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time (timeout)"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 8:
        seen += 1
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({getattr(cause, 'reason', None) or type(cause).__name__})"
        if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[cause.errno]
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "temporary failure in name resolution" in lowered or "nodename nor servname" in lowered:
        return "DNS lookup failed (unknown host)"
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        return f"TLS handshake failed ({text[:120]})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection without an answer"
    if "reset" in lowered:
        return "connection reset"
    return text[:160] or type(exc).__name__


def _get_metadata(config: ServerConfig, auth: httpx.Auth | None) -> httpx.Response:
    """The metadata GET in a daemon thread, given up after PREFLIGHT_DEADLINE (the thread is left to
    finish on its own; it holds nothing but its socket)."""
    box: dict[str, object] = {}
    timeout = httpx.Timeout(min(config.timeouts.connect, PREFLIGHT_TIMEOUT), read=PREFLIGHT_TIMEOUT, write=PREFLIGHT_TIMEOUT, pool=PREFLIGHT_TIMEOUT)

    def get() -> None:
        try:
            with httpx.Client(auth=auth, timeout=timeout, verify=config.verify_tls, headers={"Accept": "application/fhir+json"}) as client:
                box["response"] = client.get(f"{config.base_url}/metadata")
        except httpx.HTTPError as exc:
            box["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            box["crash"] = exc

    worker = threading.Thread(target=get, name="atr-preflight", daemon=True)
    worker.start()
    worker.join(PREFLIGHT_DEADLINE)
    if "response" in box:
        return box["response"]  # type: ignore[return-value]
    if "error" in box:
        words = describe_transport_error(box["error"])  # type: ignore[arg-type]
        raise ServerUnreachable(f"cannot reach the FHIR server at {config.host_port}: {words}; nothing was sent")
    if "crash" in box:
        raise box["crash"]  # type: ignore[misc]
    raise ServerUnreachable(
        f"cannot reach the FHIR server at {config.host_port}: no answer within {PREFLIGHT_DEADLINE:g} s (DNS lookup or connection hanging); nothing was sent"
    )


def preflight(config: ServerConfig, auth: httpx.Auth | None) -> ServerIdentity:
    """``GET [base]/metadata`` once; the server's identity, or a refusal that says what is wrong."""
    response = _get_metadata(config, auth)
    where = f"{config.base_url}/metadata"
    if response.status_code in (401, 403):
        raise NotAFhirServer(f"{where} answered {response.status_code}: the server refused the credentials "
                             "(set ATR_FHIR_TOKEN or ATR_SMART_*); nothing was sent")
    if response.status_code != 200:
        raise NotAFhirServer(
            f"no FHIR server at {config.base_url}: GET metadata answered HTTP {response.status_code}, not a CapabilityStatement "
            "(check the base path, e.g. .../fhir/R4); nothing was sent"
        )
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        kind = response.headers.get("Content-Type", "unknown content").split(";")[0]
        raise NotAFhirServer(f"no FHIR server at {config.base_url}: GET metadata answered {kind}, not a CapabilityStatement; nothing was sent") from None
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        got = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise NotAFhirServer(f"no FHIR server at {config.base_url}: GET metadata answered {got or 'JSON'}, not a CapabilityStatement; nothing was sent")
    version = str(body.get("fhirVersion") or "")
    if not version.startswith(R4_PREFIX):
        raise NotAFhirServer(
            f"the server at {config.base_url} speaks FHIR {version or '(no fhirVersion)'}; ATR 2.1.0 resources need FHIR R4 (4.0.x); nothing was sent"
        )
    software = body.get("software")
    if not isinstance(software, dict):
        software = {}
    implementation = body.get("implementation")
    if not isinstance(implementation, dict):
        implementation = {}
    return ServerIdentity(
        base_url=config.base_url,
        fhir_version=version,
        software=" ".join(str(software.get(k)) for k in ("name", "version") if software.get(k)),
        implementation=" ".join(str(implementation.get(k)) for k in ("description", "url") if implementation.get(k)),
    )
