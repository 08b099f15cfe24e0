"""An HTTPS server that asks for a client certificate but does not judge it in the handshake.

kube-apiserver (Go, `tls.RequestClientCert`) accepts any client certificate during the handshake
and lets its x509 authenticator decide afterwards, so a certificate from a foreign CA gets an HTTP
401, not a TLS alert. Python's `ssl` cannot do that (no verify callback), pyOpenSSL can.
"""

from __future__ import annotations

import io
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from OpenSSL import SSL, crypto


def context(cert_pem: str, key_pem: str, ca_pem: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem.encode()))
    ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem.encode()))
    ctx.add_client_ca(crypto.load_certificate(crypto.FILETYPE_PEM, ca_pem.encode()))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
    ctx.set_alpn_select_callback(lambda _conn, _protos: b"http/1.1")
    return ctx


class _Raw(io.RawIOBase):
    def __init__(self, conn: SSL.Connection) -> None:
        self.conn = conn

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.conn.recv(len(buffer))
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error):
            return 0
        buffer[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        self.conn.sendall(bytes(data))
        return len(data)


class TLSSocket:
    """The socket-like face of one TLS connection that http.server needs."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock
        peer = conn.get_peer_certificate()
        self.peer_der = (
            crypto.dump_certificate(crypto.FILETYPE_ASN1, peer) if peer is not None else None
        )

    def makefile(self, mode: str, bufsize: int = -1):
        raw = _Raw(self.conn)
        size = bufsize if bufsize > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(raw, size) if "r" in mode else io.BufferedWriter(raw, size)

    def sendall(self, data: bytes) -> None:
        self.conn.sendall(data)

    def settimeout(self, value) -> None:  # pyOpenSSL needs a blocking socket
        pass

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass

    def close(self) -> None:
        self.sock.close()


class TLSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connections are TLS (pyOpenSSL); `ssl_context` may be swapped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler: type[BaseHTTPRequestHandler], ctx: SSL.Context) -> None:
        self.ssl_context = ctx
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        request.setblocking(True)
        conn = SSL.Connection(self.ssl_context, request)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except SSL.Error:
            return
        self.RequestHandlerClass(TLSSocket(conn, request), client_address, self)

    def shutdown_request(self, request) -> None:
        socketserver.TCPServer.shutdown_request(self, request)
