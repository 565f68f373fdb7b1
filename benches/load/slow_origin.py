#!/usr/bin/env python3
"""An origin that answers every request after a fixed delay (the overload
benchmark's 50 ms upstream): HTTP/1.1 keep-alive, 13-byte body, one request at
a time per connection. Usage: slow_origin.py PORT DELAY_MS"""
import asyncio, sys

PORT, DELAY = int(sys.argv[1]), int(sys.argv[2]) / 1000
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello world!\n"


async def serve(reader, writer):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
            _, buf = buf.split(b"\r\n\r\n", 1)
            await asyncio.sleep(DELAY)
            writer.write(RESPONSE)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
