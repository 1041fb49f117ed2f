"""Tells people about incidents: an email and/or a webhook POST when one fires and when it
resolves, once per incident.

Runs after the reconciler's commit. A channel that fails is logged and tried again on the next
pass; one that got through is recorded on the alert and never sent again. notified_at (resp.
resolve_notified_at) is set when every channel got through. Each alert is delivered under a
row lock taken with SKIP LOCKED, so two reconcilers never send the same one twice.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from django import db
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from alerts.models import Alert

log = logging.getLogger(__name__)
BATCH = 50  # alerts per pass: a storm is told over several passes, the reconciler keeps going


def send_email(alert: Alert, event: str) -> None:
    state = "FIRING" if event == "fired" else "RESOLVED"
    lines = [alert.message, "", f"rule: {alert.rule.name}",
             f"fired at: {alert.fired_at:%Y-%m-%d %H:%M:%S} UTC"]
    if alert.resolved_at:
        lines.append(f"resolved at: {alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC")
    send_mail(f"[portal] {state}: {alert.subject}", "\n".join(lines),
              settings.ALERT_FROM_EMAIL, alert.rule.recipients, fail_silently=False)


class WebhookRefused(Exception):
    """A webhook target the portal will not send to."""


def public(address: str) -> bool:
    """Whether an address is on the public internet: not loopback, link-local (the cloud's
    metadata service), private, shared, multicast or reserved."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def checked_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A connection to the host, made to an address it was just resolved to and checked: every
    address the name has must be public (unless ALERT_WEBHOOK_ALLOW_PRIVATE), so a name that
    also points inside, or resolves differently on the next lookup, reaches nothing there."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not settings.ALERT_WEBHOOK_ALLOW_PRIVATE:
        inside = sorted({info[4][0] for info in infos if not public(info[4][0])})
        if inside:
            raise WebhookRefused(f"refusing to send to {host}: it resolves to "
                                 f"{', '.join(inside)}, not a public address (set "
                                 "ALERT_WEBHOOK_ALLOW_PRIVATE=1 for receivers inside)")
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"{host} has no address")


class CheckedHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = checked_socket(self.host, self.port, self.timeout)


class CheckedHTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        sock = checked_socket(self.host, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post_webhook(alert: Alert, event: str) -> None:
    """POST the alert as JSON. Redirects are not followed: a 3xx fails like a 5xx."""
    url = alert.rule.webhook_url
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:  # saved without full_clean()
        raise WebhookRefused(f"refusing to open {url!r}: only http(s) webhooks")
    body = json.dumps({"event": event, "alert": alert.as_dict()}).encode()
    timeout = settings.ALERT_WEBHOOK_TIMEOUT_S
    if parts.scheme == "https":
        connection = CheckedHTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                            context=ssl.create_default_context())
    else:
        connection = CheckedHTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": "cluster-portal-alerts"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise WebhookRefused(f"{url} answered {response.status} {response.reason}")


def channels(alert: Alert) -> list[tuple[str, str, Callable[[Alert, str], None]]]:
    """(name, target, sender) for each channel of the alert's rule (none if it was deleted)."""
    rule = alert.rule
    found = []
    if rule and rule.recipients:
        found.append(("email", rule.email_to, send_email))
    if rule and rule.webhook_url:
        found.append(("webhook", rule.webhook_url, post_webhook))
    return found


def pending() -> list[int]:
    fired = Q(resolved_at__isnull=True, notified_at__isnull=True)
    # An incident that ended before anyone could be told about it stays quiet.
    resolved = Q(resolved_at__isnull=False, notified_at__isnull=False,
                 resolve_notified_at__isnull=True)
    return list(Alert.objects.filter(fired | resolved).order_by("id")
                .values_list("pk", flat=True)[:BATCH])


def deliver(alert_id: int, down: set[str]) -> None:
    """Sends what this alert still owes. A target that failed during this pass (in `down`) is
    not tried again in it: a dead webhook costs one timeout per pass, not one per alert."""
    with transaction.atomic():
        alert = (Alert.objects.select_for_update(skip_locked=True, of=("self",))
                 .select_related("rule").filter(pk=alert_id).first())
        if alert is None:
            return  # another reconciler is on it
        event, stamp = (("resolved", "resolve_notified_at") if alert.resolved_at
                        else ("fired", "notified_at"))
        if getattr(alert, stamp) or (event == "resolved" and not alert.notified_at):
            return  # done meanwhile
        complete = True
        for name, target, send in channels(alert):
            tag = f"{event}:{name}"
            if tag in alert.delivered:
                continue
            if target in down:
                complete = False
                continue
            try:
                send(alert, event)
            except Exception as exc:  # any failure: retry on the next pass, never break the loop
                log.warning("alert %s: %s %s to %s failed: %s", alert.pk, event, name, target,
                            exc)
                down.add(target)
                complete = False
                continue
            alert.delivered.append(tag)
        if complete:
            setattr(alert, stamp, timezone.now())
        alert.save(update_fields=["delivered", stamp])


def deliver_pending() -> None:
    down: set[str] = set()
    for alert_id in pending():
        try:
            deliver(alert_id, down)
        except Exception:  # the database went away: the next pass tries again
            log.exception("alert %s: delivery failed", alert_id)


SENDERS = 4  # deliveries at once: a slow receiver holds one of them, not the reconciler
_pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="alert-sender")
_sweeping = threading.Lock()


def deliver_in_background() -> None:
    """Deliver what is pending from the bounded pool, off the caller's loop (as healthchecks'
    sendalerts does). A sweep still going when the next pass asks is left to finish."""
    if not _sweeping.acquire(blocking=False):
        return
    threading.Thread(target=_sweep, name="alert-sweep", daemon=True).start()


def _sweep() -> None:
    down: set[str] = set()
    try:
        ids = pending()
        list(_pool.map(lambda alert_id: _deliver_closing(alert_id, down), ids))
    except Exception:
        log.exception("alert delivery sweep failed")
    finally:
        db.connection.close()
        _sweeping.release()


def _deliver_closing(alert_id: int, down: set[str]) -> None:
    try:
        deliver(alert_id, down)
    except Exception:  # the database went away: the next pass tries again
        log.exception("alert %s: delivery failed", alert_id)
    finally:
        db.connection.close()

