"""Where alerts go: a webhook (POST JSON) and email (SMTP, sent from a worker thread)."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Literal, Protocol

import httpx
from pydantic import SecretStr

from workers.alerts.conditions import Alert


class ChannelError(Exception):
    """A send failed; the message names the channel and never carries a secret."""


class Channel(Protocol):
    """One way to deliver an alert."""

    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver `alert` or raise ChannelError."""
        ...


class WebhookChannel:
    """POSTs the alert as JSON; any 2xx is a delivery."""

    name = "webhook"

    def __init__(self, url: SecretStr, client: httpx.AsyncClient, *, timeout: float) -> None:
        self._url = url
        self._client = client
        self._timeout = timeout

    async def send(self, alert: Alert) -> None:
        try:
            response = await self._client.post(
                self._url.get_secret_value(),
                content=json.dumps(alert.payload(), default=str).encode(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            # httpx messages quote the URL, which may hold the webhook's token.
            raise ChannelError(f"webhook unreachable ({type(exc).__name__})") from None
        if not response.is_success:
            raise ChannelError(f"webhook answered HTTP {response.status_code}")


class EmailChannel:
    """Sends a plain-text email through an SMTP server (smtplib, in a worker thread)."""

    name = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str],
        security: Literal["starttls", "ssl", "none"] = "starttls",
        user: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.sender, self.recipients = sender, list(recipients)
        self.security = security
        self.user, self._password = user, password
        self.timeout = timeout

    def message(self, alert: Alert) -> EmailMessage:
        """The email for `alert`: subject from the title, body with the details as JSON."""
        email = EmailMessage()
        email["Subject"] = f"[kasparro] {alert.title}"
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        email["X-Kasparro-Alert"] = alert.key
        details = json.dumps(alert.details, indent=2, default=str, sort_keys=True)
        email.set_content(f"{alert.message}\n\ncondition: {alert.key}\n\n{details}\n")
        return email

    async def send(self, alert: Alert) -> None:
        try:
            await asyncio.to_thread(self._send, self.message(alert))
        except (smtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "smtp_code", None)
            detail = f"SMTP {code}" if code else type(exc).__name__
            raise ChannelError(f"email not sent via {self.host}:{self.port} ({detail})") from None

    def _send(self, email: EmailMessage) -> None:
        smtp: smtplib.SMTP
        if self.security == "ssl":
            context = ssl.create_default_context()
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if self.user and self._password is not None:
                smtp.login(self.user, self._password.get_secret_value())
            smtp.send_message(email)
