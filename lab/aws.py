"""AWS EC2 for the lab: moto's server on loopback with IAM authentication, and a throttling
proxy in front of it.

`MotoServer` runs `moto_server` as a process on 127.0.0.1 (a free port). Authentication is on:
requests must be signed with an access key moto knows, so wrong keys fail as they do on AWS
(`AuthFailure`). `access_key_id` / `secret_access_key` are a user's keys allowed everything.

`ThrottlingProxy` answers the first `throttle` requests of one EC2 action with EC2's own
`RequestLimitExceeded` (HTTP 503) and forwards everything else to the server unchanged, so
signatures still verify. `seen` counts the requests of that action.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs

import boto3

REGION = "eu-west-1"
_ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
_SETUP_REQUESTS = 3  # create_user, put_user_policy, create_access_key: before auth is enforced


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's EC2 (and IAM) on 127.0.0.1, with a user's access key; stopped on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.access_key_id = ""
        self.secret_access_key = ""

    def start(self, timeout: float = 30.0) -> Self:
        moto = Path(sys.executable).parent / "moto_server"
        environment = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)}
        self.process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)
        iam = self.client("iam", "setup", "setup")
        iam.create_user(UserName="backup")
        iam.put_user_policy(
            UserName="backup", PolicyName="all", PolicyDocument=json.dumps(_ALLOW_ALL)
        )
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def client(self, service: str = "ec2", key_id: str | None = None, secret: str | None = None):
        """A boto3 client of this server (the user's keys unless others are given)."""
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=key_id or self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_THROTTLED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
    b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    b"</Error></Errors><RequestID>lab-throttle</RequestID></Response>"
)


class ThrottlingProxy:
    """Throttle the first `throttle` requests of EC2 action `action`, forward the rest."""

    def __init__(self, upstream_port: int, action: str, throttle: int) -> None:
        self.action = action
        self.throttle = throttle
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
                if action == proxy.action:
                    with proxy._lock:
                        proxy.seen += 1
                        throttled = proxy.seen <= proxy.throttle
                    if throttled:
                        self._answer(503, {"Content-Type": "text/xml"}, _THROTTLED)
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    upstream.request("POST", self.path, body, dict(self.headers))
                    response = upstream.getresponse()
                    self._answer(response.status, dict(response.getheaders()), response.read())
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
