"""Notification channels: what a message says, how it is delivered, and the delivery log.

A notification is an :class:`~dashboard.models.Alert` (claimed once by its unique key) sent to each
of the project's channels by one RQ job per channel on the ``tasks`` queue (:func:`deliver`),
retried with RQ's ``Retry`` after ``settings.ALERT_RETRY_INTERVALS``. Every attempt is a
:class:`~dashboard.models.Delivery` row. The conductor only enqueues: a slow or dead endpoint costs
it nothing.

Webhooks (and Slack-compatible ones) obey the crawl network policy (crawler.netpolicy): only http(s);
a URL whose host is a refused literal address is refused when the channel is saved; at send time
the host is resolved, every address is checked, and the connection goes to the checked address
(no DNS-rebinding window), with a time limit, a cap on the answer read and no redirect followed.
See docs/alerts.md.
"""

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from rq import Retry, get_current_job

from crawler.netpolicy import Policy, scheme_allowed
from dashboard import live, ratelimit, tasks
from dashboard.models import Alert, Channel, Delivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Crawlsite-Signature"
URL_MAX = 2000
SECRET_MAX = 200
EMAILS_MAX = 10


class Refused(Exception):
    """The network policy refuses the endpoint; the message says which address and why."""


class DeliveryError(Exception):
    """An attempt failed; the message is shown in the delivery log."""


# -- validation (API and the project page share it) ----------------------------------------------


def clean_channel(project, data):
    """``data`` (a dict from JSON or a form) as the fields of a new Channel; raises ValidationError
    with a dict ``{field: [messages]}``."""
    errors = {}
    if not isinstance(data, dict):
        raise ValidationError({"__all__": ["The channel must be a JSON object."]})
    kind = data.get("kind")
    if kind not in Channel.KINDS:
        raise ValidationError({"kind": [f"Unknown kind {str(kind)[:40]!r}: use one of {', '.join(Channel.KINDS)}."]})
    always = data.get("always", False)
    if not isinstance(always, bool):
        errors["always"] = ["Must be true or false."]
    clean = {"kind": kind, "always": always is True}
    if kind == Channel.EMAIL:
        emails = data.get("emails", data.get("to"))
        if isinstance(emails, str):
            emails = [e.strip() for e in emails.replace(";", ",").split(",") if e.strip()]
        if not isinstance(emails, list) or not emails:
            errors["emails"] = ["Give at least one email address."]
        elif len(emails) > EMAILS_MAX:
            errors["emails"] = [f"At most {EMAILS_MAX} addresses."]
        else:
            for address in emails:
                try:
                    if not isinstance(address, str) or len(address) > 254:
                        raise ValidationError("bad")
                    validate_email(address)
                except ValidationError:
                    errors["emails"] = [f"{str(address)[:80]!r} is not an email address."]
                    break
            clean["emails"] = emails
    else:
        try:
            clean["url"] = clean_url(data.get("url"))
        except ValidationError as exc:
            errors["url"] = exc.messages
        if kind == Channel.WEBHOOK:
            secret = data.get("secret")
            if secret in (None, ""):
                secret = secrets.token_urlsafe(32)  # shown once, in the answer that creates it
            if not isinstance(secret, str) or not 16 <= len(secret) <= SECRET_MAX \
                    or any(ord(ch) < 32 for ch in secret):
                errors["secret"] = [f"Use 16 to {SECRET_MAX} printable characters (or leave it out to get one)."]
            clean["secret"] = secret
    if project.channels.count() >= Channel.MAX_PER_PROJECT:
        errors["__all__"] = [f"A project has at most {Channel.MAX_PER_PROJECT} channels."]
    if errors:
        raise ValidationError(errors)
    return clean


def clean_url(url):
    """An http(s) URL whose host is not a refused literal address; raises ValidationError."""
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("Give the URL to POST to.")
    url = url.strip()
    if len(url) > URL_MAX:
        raise ValidationError(f"The URL is {len(url)} characters long; at most {URL_MAX} are allowed.")
    if any(ord(ch) < 33 for ch in url):
        raise ValidationError("The URL may not contain spaces or control characters.")
    if not scheme_allowed(url):
        raise ValidationError("The URL must start with http:// or https://.")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise ValidationError(f"The URL is not valid ({exc}).") from None
    if not parts.hostname:
        raise ValidationError("The URL names no host.")
    if parts.username or parts.password:
        raise ValidationError("The URL may not carry a user name or password.")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None:
        refusal = Policy.from_env().check(literal, port)
        if refusal:
            raise ValidationError(f"The URL points at a refused address: {refusal} (network policy; port {port} "
                                  "not opened by CRAWLSITE_ALLOWED_NETWORKS).")
    return url


# -- the message -----------------------------------------------------------------------------------


def message(event, project, crawl=None, checks=(), reading=None):
    """The body every channel gets (a webhook as JSON; Slack and email as its :func:`summary`).
    ``reading``: the live counters of a running crawl (an ended one shows its recorded stats)."""
    body = {"event": event, "project": {"id": project.code, "name": project.name}, "crawl": None,
            "monitors": [dict(c) for c in checks]}
    if crawl is not None:
        view = live.crawl_view(crawl, reading or {})
        body["crawl"] = {"code": crawl.code, "status": crawl.status, "counters": view["counters"],
                         "coverage": view["coverage"], "invalid": int(view.get("invalid", 0) or 0),
                         "reason": crawl.reason, "stalled": crawl.stalled_reason or None,
                         "url": settings.PUBLIC_URL.rstrip("/") + view["url"]}
    return body


HEADLINES = {
    Alert.RUN_ENDED: "run {code} ended: {status}",
    Alert.RUN_STALLED: "run {code} is stalled",
    Alert.RUN_RECOVERED: "run {code} recovered from its stall",
    Alert.TEST: "test notification",
}


def summary(body):
    """A few lines for people (Slack, email)."""
    crawl = body.get("crawl") or {}
    headline = HEADLINES.get(body["event"], body["event"]).format(code=crawl.get("code", ""),
                                                                  status=crawl.get("status", ""))
    lines = [f"[Crawlsite] {body['project']['name']}: {headline}"]
    if crawl.get("stalled") and body["event"] == Alert.RUN_STALLED:
        lines.append(crawl["stalled"])
    failed = [m for m in body.get("monitors", []) if not m.get("passed")]
    for m in failed:
        what = m["kind"] + (f" {m['field']}" if m.get("field") else "")
        lines.append(f"FAILED {what}: value {m.get('value')}, threshold {m.get('threshold')}")
    if body.get("monitors") and not failed:
        lines.append(f"All {len(body['monitors'])} monitor(s) passed.")
    if crawl.get("url"):
        lines.append(crawl["url"])
    return "\n".join(lines)


# -- deciding and queueing -------------------------------------------------------------------------


def announce(project, event, key, crawl=None, checks=(), channels=None, reading=None):
    """Claim the notification ``key`` (unique: a second call does nothing and returns None) and
    queue one delivery job per channel once the transaction commits."""
    channels = list(project.channels.all() if channels is None else channels)
    try:
        with transaction.atomic():
            alert = Alert.objects.create(project=project, crawl=crawl, key=key[:120], event=event,
                                         payload=message(event, project, crawl, checks, reading))
    except IntegrityError:
        return None
    for channel in channels:
        queue_delivery(alert, channel)
    return alert


def queue_delivery(alert, channel):
    intervals = list(settings.ALERT_RETRY_INTERVALS)
    tasks.enqueue(deliver, alert.pk, channel.public_id, job_id=f"deliver-{alert.pk}-{channel.public_id}",
                  timeout=settings.ALERT_JOB_TIMEOUT, description=f"notify {alert.event} via {channel.kind}",
                  retry=Retry(max=len(intervals), interval=intervals) if intervals else None)


# -- the job ---------------------------------------------------------------------------------------


def deliver(alert_id, channel_id):
    """RQ job (queue ``tasks``): one attempt to send an alert through one channel, logged. A failed
    attempt raises, so RQ retries it while retries are left."""
    alert = Alert.objects.select_related("project").filter(pk=alert_id).first()
    channel = Channel.objects.filter(public_id=channel_id).first()
    if alert is None or channel is None:
        return "gone"  # deleted meanwhile: nothing to send
    job = get_current_job()
    retries_left = getattr(job, "retries_left", None) or 0
    planned = len(getattr(job, "retry_intervals", None) or []) if job is not None else 0
    attempt = planned - retries_left + 1 if job is not None and job.retries_left is not None else 1
    try:
        detail = send(channel, alert.payload)
    except (DeliveryError, Refused) as exc:
        outcome = Delivery.RETRYING if retries_left > 0 else Delivery.FAILED
        _log(alert, channel, attempt, outcome, str(exc))
        raise DeliveryError(f"{channel.kind} {channel.target}: {exc}") from None
    _log(alert, channel, attempt, Delivery.DELIVERED, detail)
    return detail


def _log(alert, channel, attempt, outcome, detail):
    Delivery.objects.create(alert=alert, channel=channel, project=alert.project, channel_kind=channel.kind,
                            target=channel.target[:300], attempt=attempt, outcome=outcome, detail=detail[:500])


def send(channel, body):
    """Send ``body`` through ``channel`` now; returns what happened, raises DeliveryError/Refused."""
    if channel.kind == Channel.EMAIL:
        subject = summary(body).splitlines()[0][:200]
        try:
            send_mail(subject, summary(body), None, channel.emails, fail_silently=False)
        except Exception as exc:  # SMTP errors, refused connections, timeouts
            raise DeliveryError(f"mail not sent ({type(exc).__name__}: {str(exc)[:200]})") from None
        return f"mailed to {len(channel.emails)} recipient(s)"
    if channel.kind == Channel.SLACK:
        raw = json.dumps({"text": summary(body)}).encode()
        headers = {}
    else:
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        headers = {SIGNATURE_HEADER: "sha256=" + signature(channel.secret, raw),
                   "X-Crawlsite-Event": body["event"]}
    status = post(channel.url, raw, headers)
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")
    return f"HTTP {status}"


def signature(secret, raw):
    """Hex HMAC-SHA256 of the raw body with the channel's secret."""
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# -- a guarded POST --------------------------------------------------------------------------------


def resolve(host, port, timeout):
    """Every address ``host`` resolves to (a literal address is itself), within ``timeout`` seconds.

    ``getaddrinfo`` has no time limit of its own: it runs in a daemon thread of its own, and a
    lookup that does not answer in time is abandoned (the thread ends with the system's lookup)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    answer = {}
    done = threading.Event()

    def lookup():
        try:
            answer["found"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="notify-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise DeliveryError(f"cannot resolve {host[:100]}: no answer within {timeout:g} s")
    if "error" in answer:
        raise DeliveryError(f"cannot resolve {host[:100]} ({answer['error']})")
    return list(dict.fromkeys(ipaddress.ip_address(f[4][0].split("%")[0]) for f in answer["found"]))


def post(url, raw, headers, timeout=None, max_bytes=None):
    """POST ``raw`` (JSON) to ``url`` under the network policy; returns the HTTP status.

    The host is resolved once; every address must pass the policy (else Refused); the connection
    goes to the first address, with the URL's host name for the Host header, TLS SNI and
    certificate check. No redirect is followed; at most ``max_bytes`` of the answer are read, and
    the whole exchange, name lookup included, stops after ``timeout`` seconds."""
    timeout = settings.ALERT_SEND_TIMEOUT if timeout is None else timeout
    max_bytes = settings.ALERT_RESPONSE_MAX_BYTES if max_bytes is None else max_bytes
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{scheme or 'no'} scheme: only http and https are sent to")
    port = parts.port or (443 if scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    addresses = resolve(parts.hostname, port, timeout)
    policy = Policy.from_env()
    for address in addresses:
        refusal = policy.check(address, port)
        if refusal:
            raise Refused(f"{parts.hostname} resolves to a refused address: {refusal}")
    if not addresses:
        raise DeliveryError(f"{parts.hostname} resolves to no address")
    address = str(addresses[0])
    left = max(0.001, deadline - time.monotonic())
    limits = urllib3.Timeout(connect=left, read=left)
    if scheme == "https":
        pool = urllib3.HTTPSConnectionPool(address, port, timeout=limits, retries=False, maxsize=1,
                                           server_hostname=parts.hostname, assert_hostname=parts.hostname,
                                           cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=limits, retries=False, maxsize=1)
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:
        host_header = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        response = pool.urlopen("POST", path, body=raw, redirect=False, retries=False, preload_content=False,
                                headers={"Host": host_header, "Content-Type": "application/json",
                                         "User-Agent": "Crawlsite-Notifier/1", **headers})
    except urllib3.exceptions.HTTPError as exc:
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # (a subclass of the timeouts)
            raise DeliveryError(f"cannot connect to {address} port {port} (connection refused or unreachable)") from None
        if isinstance(exc, urllib3.exceptions.TimeoutError) or time.monotonic() >= deadline:
            raise DeliveryError(f"no answer within {timeout:g} s") from None
        raise DeliveryError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        pool.close()
    # The status is known: read (and drop) at most max_bytes of the body, within the time left.
    try:
        read = 0
        while read <= max_bytes and time.monotonic() < deadline:
            chunk = response.read(8192)
            if not chunk:
                break
            read += len(chunk)
    except urllib3.exceptions.HTTPError:
        pass
    finally:
        response.close()
    return response.status


# -- send test -------------------------------------------------------------------------------------


def send_test(channel, user):
    """Queue a ``test`` notification through one channel (the "Send test" button), at most
    ``CHANNEL_TESTS_PER_MINUTE`` a minute per user (:class:`dashboard.ratelimit.Limited` past it)."""
    ratelimit.take_turn("channel-test", user, settings.CHANNEL_TESTS_PER_MINUTE, "test notifications")
    key = f"test:{channel.public_id}:{secrets.token_hex(6)}"
    return announce(channel.project, Alert.TEST, key, channels=[channel])
