"""Virus scanning with ClamAV: the raw mail goes to clamd over its socket (``INSTREAM``); clamd decodes MIME itself.

clamd unpacks base64 and quoted-printable parts and the archives inside them (``ScanMail``/``ScanArchive``, on by
default), so one scan of the whole raw mail covers every attachment. The protocol is small and written here: the
maintained async clients on PyPI speak TCP only, so a unix socket (the usual local clamd) would not work with them.
"""

from __future__ import annotations

import asyncio
import struct

from smtp.checks.address import ServiceAddress, ServiceCheck, service_client
from smtp.checks.base import CheckContext, Stage
from smtp.mime import ParsedMail
from tenants.platform.config import Config

#: clamd's usual TCP port, used when MAILWARD_CLAMD names a host without one.
DEFAULT_PORT = 3310
#: Bytes per INSTREAM chunk. clamd counts the whole stream against its StreamMaxLength, not the chunks.
CHUNK_SIZE = 64 * 1024
#: Seconds allowed to connect to clamd (a dead host should not eat the whole scan timeout).
CONNECT_TIMEOUT = 5.0
#: Seconds one scan may take, from connect to reply; a 50 MB mail with archives takes a few seconds.
SCAN_TIMEOUT = 60.0
#: Most bytes of a clamd reply we read; a reply is one short line.
MAX_REPLY = 4096


class ClamdError(Exception):
    """clamd could not be reached, timed out, or answered with an error (e.g. the stream size limit)."""


class ClamdAddress(ServiceAddress):
    """Where clamd listens (see :class:`~smtp.checks.address.ServiceAddress`); a bare host means its default port."""

    @classmethod
    def parse(cls, value: str, *, default_port: int = DEFAULT_PORT) -> ServiceAddress:
        return super().parse(value, default_port=default_port)


def parse_reply(reply: bytes) -> str | None:
    """The signature name of a ``stream: NAME FOUND`` reply, None for ``stream: OK``; anything else raises."""
    text = reply.rstrip(b"\0\r\n").decode("utf-8", "replace").strip()
    if text.endswith(" FOUND"):
        name = text[: -len(" FOUND")].partition(": ")[2].strip()
        return name or "unnamed signature"
    if text.endswith(": OK"):
        return None
    raise ClamdError(f"clamd answered {text!r}" if text else "clamd closed the connection without an answer")


class ClamdClient:
    """A one-connection-per-scan clamd client on asyncio streams (TCP or unix socket)."""

    def __init__(self, address: str, *, connect_timeout: float = CONNECT_TIMEOUT, timeout: float = SCAN_TIMEOUT,
                 chunk_size: int = CHUNK_SIZE) -> None:
        if connect_timeout <= 0 or timeout <= 0 or chunk_size <= 0:
            raise ValueError("timeouts and chunk size must be positive")
        self.address = ClamdAddress.parse(address)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.chunk_size = chunk_size

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.address.path is not None:
                    return await asyncio.open_unix_connection(self.address.path, limit=MAX_REPLY)
                return await asyncio.open_connection(self.address.host, self.address.port, limit=MAX_REPLY)
        except TimeoutError as exc:
            raise ClamdError(f"clamd at {self.address}: connect timed out after {self.connect_timeout:g}s") from exc
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address} unreachable: {exc.strerror or exc}") from exc

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    @staticmethod
    async def _read_reply(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as exc:  # clamd closed after an answer without the NUL
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            raise ClamdError("clamd reply too long") from exc

    async def ping(self) -> bool:
        """True when clamd answers PONG."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    writer.write(b"zPING\0")
                    await writer.drain()
                    return (await self._read_reply(reader)).rstrip(b"\0\n") == b"PONG"
                finally:
                    await self._close(writer)
        except (ClamdError, OSError, TimeoutError):
            return False

    async def instream(self, data: bytes) -> str | None:
        """Scan ``data``: the signature name when clamd finds something, None when clean; raises ClamdError."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._instream(data)
        except TimeoutError as exc:
            raise ClamdError(f"clamd at {self.address}: no answer within {self.timeout:g}s") from exc

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, reply: asyncio.Future[bytes]) -> None:
        writer.write(b"zINSTREAM\0")
        view = memoryview(data)
        for start in range(0, len(view), self.chunk_size):
            if reply.done():  # clamd answered early: an error such as the size limit; it stops reading
                return
            chunk = view[start:start + self.chunk_size]
            writer.write(struct.pack(">I", len(chunk)))
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)  # let the loop read an early answer before clamd hangs up on the next chunk
        writer.write(struct.pack(">I", 0))
        await writer.drain()

    async def _instream(self, data: bytes) -> str | None:
        reader, writer = await self._connect()
        reply = asyncio.ensure_future(self._read_reply(reader))
        try:
            try:
                await self._send(writer, data, reply)
            except OSError as exc:
                # clamd answers and hangs up mid-stream when the stream is over its StreamMaxLength; the answer is
                # lost if the reset arrives before it was read.
                try:
                    answer = await reply
                except OSError:
                    answer = b""
                if not answer:
                    raise ClamdError(f"clamd at {self.address} closed the connection while receiving the mail "
                                     f"(over its StreamMaxLength?): {exc}") from exc
                return parse_reply(answer)
            return parse_reply(await reply)
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address}: {exc.strerror or exc}") from exc
        finally:
            if not reply.done():
                reply.cancel()
            await self._close(writer)


class VirusCheck(ServiceCheck):
    """ClamAV over clamd's socket. Required: when clamd cannot answer, CLAM_TEMPFAIL lets the policy decide."""

    name = "clam"
    stage = Stage.DATA
    #: A little longer than the client's own timeout, so the client's clearer error is the one recorded.
    timeout = SCAN_TIMEOUT + 5.0
    symbols = ("CLAM_VIRUS", "CLAM_TEMPFAIL")
    required = True
    error = ClamdError

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.client = service_client(ClamdClient, cfg.clamd, "MAILWARD_CLAMD")

    async def scan(self, ctx: CheckContext, mail: ParsedMail) -> None:
        signature = await self.client.instream(mail.raw)
        if signature is not None:
            ctx.add("CLAM_VIRUS", signature)
