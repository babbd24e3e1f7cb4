"""`atr serve` and `atr clients ...`: the producer API's commands (registered from cli.py)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

clients_app = typer.Typer(help="Register the Backend Services clients (providers) allowed to pull their Groups.",
                          no_args_is_help=True, add_completion=False)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback needs --tls-terminated-in-front")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0 picks a free one; the chosen URL is printed on stdout)")] = 8080,
    home: Annotated[Path | None, typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
    public_url: Annotated[str | None, typer.Option(help="FHIR base URL clients use, e.g. https://atr.example.org/fhir behind a proxy")] = None,
    tls_terminated_in_front: Annotated[
        bool,
        typer.Option("--tls-terminated-in-front", help="a reverse proxy terminates TLS; allows a non-loopback bind"),
    ] = False,
    export_workers: Annotated[int, typer.Option(help="export jobs run at once")] = 2,
    access_log: Annotated[bool, typer.Option(help="log each request line")] = False,
    allow_http_notifications: Annotated[
        bool,
        typer.Option("--allow-http-notifications", help="let Subscriptions notify plain http endpoints beyond loopback"),
    ] = False,
) -> None:
    """Serve the published ATR lists: FHIR REST, SMART Backend Services and $davinci-data-export."""
    import uvicorn

    from atr_pipeline.api.app import ApiConfig, create_app
    from atr_pipeline.config import load_settings

    if not _loopback(host) and not tls_terminated_in_front:
        typer.echo(f"error: refusing to serve plain HTTP on {host}: bind 127.0.0.1 behind a TLS-terminating proxy, "
                   "or pass --tls-terminated-in-front if one is in front of this address (see docs/API.md)", err=True)
        raise typer.Exit(2)
    if public_url and not public_url.startswith("https://") and not _loopback(public_url.split("/")[2].rsplit(":", 1)[0].strip("[]")):
        typer.echo("error: --public-url must be https:// unless it is a loopback address", err=True)
        raise typer.Exit(2)
    settings = load_settings(home)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        typer.echo(f"error: cannot bind {host}:{port} ({exc.strerror})", err=True)
        raise typer.Exit(2) from None
    bound = sock.getsockname()[1]
    app = create_app(ApiConfig(home=settings.home, public_url=public_url, workers=export_workers,
                               allow_http_notifications=allow_http_notifications))
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    public = f" (clients use {public_url})" if public_url else ""
    print(f"serving {settings.home} at http://{shown}:{bound}/fhir{public}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


@clients_app.command("add")
def clients_add(
    group: Annotated[list[str], typer.Option("--group", help="SYSTEM|VALUE of a Group identifier (contract id, NPI, TIN); repeatable")],
    jwks_file: Annotated[Path | None, typer.Option(help="the client's public JWKS (JSON)")] = None,
    jwks_url: Annotated[str | None, typer.Option(help="where the client publishes its JWKS (https)")] = None,
    home: Annotated[Path | None, typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
) -> None:
    """Register a client; prints its client_id as the only line on stdout."""
    from atr_pipeline.api.clients import add_client
    from atr_pipeline.config import load_settings
    from atr_pipeline.errors import AtrError

    try:
        client = add_client(load_settings(home).home, group, jwks_file=jwks_file, jwks_url=jwks_url)
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    sys.stdout.write(client.client_id + "\n")


@clients_app.command("list")
def clients_list(home: Annotated[Path | None, typer.Option(help="state folder")] = None) -> None:
    """Registered clients and the Group identifiers each may see."""
    from atr_pipeline.api.clients import list_clients
    from atr_pipeline.config import load_settings

    for client in list_clients(load_settings(home).home):
        keys = f"jwks-url {client.jwks_url}" if client.jwks_url else f"{len(client.jwks['keys'])} key(s)" if client.jwks else "no keys"
        typer.echo(f"{client.client_id}  {keys}  groups: {', '.join(f'{s}|{v}' for s, v in client.groups)}")




@clients_app.command("keygen")
def clients_keygen(
    out: Annotated[Path, typer.Option(help="folder for private_key.pem (0600) and jwks.json")],
    alg: Annotated[str, typer.Option(help="ES384 or RS384")] = "ES384",
) -> None:
    """Make a provider key pair to try the API (a real provider makes its own and sends only jwks.json)."""
    from atr_pipeline.api.provider import make_key_pair

    key_path, jwks_path, kid = make_key_pair(out, alg)
    typer.echo(f"{jwks_path}\n{key_path}\nkid {kid}", err=True)


@clients_app.command("assertion")
def clients_assertion(
    client_id: Annotated[str, typer.Option(help="the client_id `atr clients add` printed")],
    key: Annotated[Path, typer.Option(help="the client's private_key.pem")],
    token_url: Annotated[str, typer.Option(help="the server's token endpoint (the assertion's aud)")],
) -> None:
    """Print a signed client assertion (5 minutes, new jti) for a token request with curl."""
    from atr_pipeline.api.provider import signed_assertion

    sys.stdout.write(signed_assertion(token_url, client_id, key) + "\n")


def pull(
    base: Annotated[str, typer.Option(help="the server's FHIR base URL, e.g. http://127.0.0.1:8080/fhir")],
    client_id: Annotated[str, typer.Option(help="the client_id `atr clients add` printed")],
    key: Annotated[Path, typer.Option(help="the client's private_key.pem")],
    identifier: Annotated[str, typer.Option(help="SYSTEM|VALUE of the Group to pull (contract id, NPI, TIN)")],
    out: Annotated[Path, typer.Option(help="folder for the NDJSON files and manifest.json")],
) -> None:
    """The provider's side: token, find the Group, $davinci-data-export, poll, download (then `atr conform OUT`)."""
    from atr_pipeline.api.provider import pull as run_pull
    from atr_pipeline.errors import AtrError

    try:
        counts = run_pull(base, client_id, key, identifier, out)
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(", ".join(f"{t} {n}" for t, n in counts.items()) + f" -> {out}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("pull")(pull)
    app.add_typer(clients_app, name="clients")
