"""A source's credentials, from the Airflow connection its pipeline names.

The pipeline YAML never holds a secret: a source names a connection (``connection: my_git``)
and whatever runs the command hands that connection over in the variable Airflow itself
reads, ``AIRFLOW_CONN_<CONN ID>``: an Airflow task renders it from the connection
(:mod:`tamis_airflow.corpus`), a pod gets it from the Kubernetes Secret
``tamis-conn-<conn id>``, a person exports it. Both of Airflow's formats are understood, the
connection URI and JSON, so this library reads them without importing Airflow.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class MissingConnection(LookupError):
    pass


@dataclass(frozen=True)
class Connection:
    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def http_headers(self) -> dict[str, str]:
        """Headers that authenticate an HTTP request: Basic with a login and password, Bearer
        with a password (a token) alone, plus any ``headers`` in the connection's extra."""
        given = self.extra.get("headers") or {}
        headers = {str(k): str(v) for k, v in (json.loads(given) if isinstance(given, str) else given).items()}
        if self.login and self.password is not None:
            token = base64.b64encode(f"{self.login}:{self.password}".encode()).decode()
            headers.setdefault("Authorization", f"Basic {token}")
        elif self.password:
            headers.setdefault("Authorization", f"Bearer {self.password}")
        return headers

    def s3_options(self) -> dict[str, Any]:
        """fsspec/s3fs options of an ``aws`` connection: keys, session token, endpoint, region."""
        extra = self.extra
        options: dict[str, Any] = {
            "config_kwargs": {
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
        }
        key = self.login or extra.get("aws_access_key_id")
        secret = self.password or extra.get("aws_secret_access_key")
        if key:
            options["key"], options["secret"] = key, secret
        if extra.get("aws_session_token"):
            options["token"] = extra["aws_session_token"]
        client: dict[str, Any] = {}
        endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
        if endpoint:
            client["endpoint_url"] = endpoint
        if extra.get("region_name"):
            client["region_name"] = extra["region_name"]
        if client:
            options["client_kwargs"] = client
        return options


def env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def get_connection(conn_id: str, environ: Mapping[str, str] | None = None) -> Connection:
    environ = os.environ if environ is None else environ
    name = env_name(conn_id)
    value = environ.get(name)
    if not value:
        raise MissingConnection(
            f"connection {conn_id!r} is not available: {name} is not set (an Airflow task sets it from the "
            f"connection; a pod gets it from the Secret tamis-conn-{conn_id.lower().replace('_', '-')}; "
            "by hand, export it as the connection's URI or JSON)"
        )
    try:
        return parse_json(conn_id, value) if value.lstrip().startswith("{") else parse_uri(conn_id, value)
    except (ValueError, TypeError) as exc:
        raise MissingConnection(
            f"connection {conn_id!r}: {name} is neither an Airflow connection URI nor its JSON ({type(exc).__name__})"
        ) from None


def parse_json(conn_id: str, value: str) -> Connection:
    data = json.loads(value)
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    port = data.get("port")
    return Connection(
        conn_id,
        data.get("conn_type"),
        data.get("host"),
        data.get("login"),
        data.get("password"),
        int(port) if port not in (None, "") else None,
        data.get("schema"),
        dict(extra),
    )


def parse_uri(conn_id: str, uri: str) -> Connection:
    """Airflow's connection URI: ``<type>://<login>:<password>@<host>:<port>/<schema>?<extra>``,
    the host possibly carrying a protocol of its own (``http://https://host``), the extra either
    as query parameters or as JSON under ``__extra__``."""
    if uri.count("://") > 2:
        raise ValueError("more than two '://'")
    scheme = urlsplit(uri).scheme
    if not scheme:
        raise ValueError("no connection type")
    with_protocol = uri.count("://") == 2
    rest = uri.replace(f"{scheme}://", "" if with_protocol else "//", 1)
    parts = urlsplit(rest)
    host = unquote(parts.hostname or "")
    if "/" in host:  # a host with a protocol of its own, quoted
        host = unquote(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0])
    if host and with_protocol:
        host = f"{parts.scheme}://{host}"
    extra: dict[str, Any] = {}
    if parts.query:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        # As the task SDK writes them: flat string values as parameters, anything else as JSON.
        extra = (json.loads(query["__extra__"]) if query["__extra__"] else {}) if "__extra__" in query else query
    return Connection(
        conn_id,
        "postgres" if scheme == "postgresql" else scheme.replace("-", "_"),
        host or None,
        unquote(parts.username) if parts.username else parts.username,
        unquote(parts.password) if parts.password else parts.password,
        parts.port,
        unquote(parts.path[1:]) if parts.path[1:] else None,
        extra,
    )
