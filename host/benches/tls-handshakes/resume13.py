#!/usr/bin/python3
"""Resumed TLS 1.3 handshakes, one after another, for SECONDS (issue 13).

`openssl s_time -reuse` cannot resume TLS 1.3: the server sends its tickets
(NewSessionTicket) after the handshake, and s_time reads nothing after it. This client
does what a browser does: each connection sends one request (`GET /`, `Connection:
close`) and reads the answer to the end, so the tickets that came before the answer have
been read; the next connection resumes with the newest ticket (`session=`), PSK with
ECDHE (OpenSSL's client offers `psk_dhe_ke` only). One full handshake first gets the
first ticket; after that a connection counts only if the server resumed it
(`session_reused`); any that was not is counted apart and printed, and makes the exit
status 1.

With `new`, every connection is a full handshake (no session offered) with the same
request: the same work but the resumption, to tell what the request costs.

TLS 1.3 only, X25519 (OpenSSL's first key share), no ALPN; the server's certificate is
not verified (a resumed handshake carries none).

usage: resume13.py HOST PORT SECONDS [resume|new] [PATH]
prints: `N resumed, M not resumed, K bytes of answers in S s` (resume) or
        `N full, K bytes of answers in S s` (new)
"""
import socket
import ssl
import sys
import time


def exchange(ctx, addr, session, request):
    """One connection: handshake (resuming `session` if given), request, the whole answer.
    Returns (resumed, the newest session, bytes of answer)."""
    with socket.create_connection(addr) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(request)
            got = 0
            head = b""
            while True:
                chunk = tls.recv(16384)
                if not chunk:
                    break
                if len(head) < 12:
                    head += chunk[:12]
                got += len(chunk)
            if not head.startswith(b"HTTP/1."):
                raise RuntimeError(f"{addr[0]}:{addr[1]} answered {head!r}, not HTTP")
            return tls.session_reused, tls.session, got


def main():
    if not 4 <= len(sys.argv) <= 6 or sys.argv[4:5] not in ([], ["resume"], ["new"]):
        sys.exit("usage: resume13.py HOST PORT SECONDS [resume|new] [PATH]")
    addr, secs = (sys.argv[1], int(sys.argv[2])), float(sys.argv[3])
    full = sys.argv[4:5] == ["new"]
    path = sys.argv[5] if len(sys.argv) > 5 else "/"
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if full:
        n = answered = 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < secs:
            answered += exchange(ctx, addr, None, request)[2]
            n += 1
        print(f"{n} full, {answered} bytes of answers in {elapsed:.2f} s")
        return
    _, session, _ = exchange(ctx, addr, None, request)
    if session is None or not session.has_ticket:
        sys.exit(f"{addr[0]}:{addr[1]} sent no TLS 1.3 session ticket")
    resumed = not_resumed = answered = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < secs:
        reused, newest, got = exchange(ctx, addr, session, request)
        if reused:
            resumed += 1
        else:
            not_resumed += 1
        answered += got
        if newest is not None and newest.has_ticket:
            session = newest
    print(f"{resumed} resumed, {not_resumed} not resumed, {answered} bytes of answers in {elapsed:.2f} s")
    sys.exit(1 if not_resumed else 0)


if __name__ == "__main__":
    main()
