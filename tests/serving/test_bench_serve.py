"""bench serve's load client: pre-encoded multipart requests and HTTP/1.1 responses over one keep-alive
connection, against a real loopback socket (the figures are only as good as this parser)."""

from __future__ import annotations

import asyncio

from markguard.serving.bench_serve import _exchange, _request


def test_request_is_a_multipart_form_with_the_photo_and_fields():
    raw = _request(8080, "/score", "mg_key", b"\xff\xd8\xffJPEG", {"brand": "Oatly"})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /score HTTP/1.1\r\n") and b"Authorization: Bearer mg_key" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b'name="brand"\r\n\r\nOatly\r\n' in body and b'filename="p.jpg"' in body and b"\xff\xd8\xffJPEG\r\n" in body


def test_exchange_reads_sized_chunked_and_closing_responses_on_one_connection():
    replies = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ]

    async def main() -> list[tuple[int, bytes, bool]]:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for reply in replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")).split(b":")[1])
                seen.append(await reader.readexactly(length))
                writer.write(reply)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = _request(port, "/embed", "k", b"\xff\xd8\xffx", {})
        out = [await _exchange(reader, writer, request) for _ in replies]
        writer.close()
        server.close()
        assert len(seen) == 3 and all(b"\xff\xd8\xffx" in body for body in seen)
        return out

    assert asyncio.run(main()) == [(200, b"hello", True), (200, b"abcdefg", True), (413, b"{}", False)]
