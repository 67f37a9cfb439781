"""The uvicorn internals the gateway builds on still have the shape it relies on.

``server.GuardedHttpToolsProtocol`` subclasses uvicorn's private ``HttpToolsProtocol``: it
overrides some of its methods (calling ``super()``), replaces ``data_received`` with its own
copy of uvicorn's logic, calls private helpers and reads per-connection state.
``serving.GatewayServer`` overrides hooks of ``uvicorn.Server``. None of this is uvicorn's
public API, so ``pyproject.toml`` bounds uvicorn to the releases checked against it; this test
fails on a release that changed any of it. To raise the bound: install the new release, run
this test, review ``server.py``/``serving.py`` against what changed, then update the bound
(and the fingerprint below when ``data_received`` changed).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import textwrap
import tokenize
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from ethereal.server import GuardedHttpToolsProtocol
from ethereal.serving import GatewayServer
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from uvicorn.server import ServerState


def _assigned_attributes(cls: type) -> set[str]:
    """Every ``self.NAME`` a class's own methods assign (its instance state)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                names.add(target.attr)
    return names


def _parameters(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


# method -> parameters (self included), for every HttpToolsProtocol method server.py overrides or calls
PROTOCOL_METHODS = {
    "__init__": ["self", "config", "server_state", "app_state", "_loop"],
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "handle_websocket_upgrade": ["self"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
    "send_400_response": ["self", "msg"],
    "_unset_keepalive_if_required": ["self"],
    "_should_upgrade": ["self"],
    "_unsupported_upgrade_warning": ["self"],
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_METHODS))
def test_protocol_methods_server_py_uses_keep_their_signature(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), f"uvicorn's HttpToolsProtocol has no {name}: server.py calls or overrides it"
    assert _parameters(method) == PROTOCOL_METHODS[name]


def test_protocol_state_server_py_reads_is_still_there() -> None:
    assert {
        "loop",
        "logger",
        "parser",
        "server_state",
        "connections",
        "transport",
        "flow",
        "cycle",
        "headers",
        "timeout_keep_alive_task",
    } <= _assigned_attributes(HttpToolsProtocol)
    assert {"response_started", "response_complete"} <= _assigned_attributes(RequestResponseCycle)
    assert "read_paused" in _assigned_attributes(FlowControl)
    # the sweeper is kept on the shared server state (server._sweeper_of): it must take new attributes
    state = ServerState()
    state.ethereal_sweeper = None  # type: ignore[attr-defined]
    assert isinstance(state.connections, set)


# uvicorn's HttpToolsProtocol.data_received as tokens (comments and layout do not count):
# GuardedHttpToolsProtocol.data_received is a copy of its logic plus the limits, so any change
# to it must be carried over. The same in 0.31.0 and 0.55.0.
DATA_RECEIVED_FINGERPRINT = "caa12599ec2ae0eb7aa475ca20d6c7ef"
_LAYOUT = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


def test_data_received_is_the_logic_server_py_copied() -> None:
    source = textwrap.dedent(inspect.getsource(HttpToolsProtocol.data_received))
    tokens = [
        t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in _LAYOUT
    ]
    digest = hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:32]
    assert digest == DATA_RECEIVED_FINGERPRINT, (
        "uvicorn's HttpToolsProtocol.data_received changed: carry the change over to"
        " GuardedHttpToolsProtocol.data_received (server.py), then update the fingerprint"
    )


def test_the_guarded_protocol_overrides_with_the_same_signatures() -> None:
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "handle_websocket_upgrade",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
    ):
        assert _parameters(getattr(GuardedHttpToolsProtocol, name)) == PROTOCOL_METHODS[name], name


# uvicorn.Server hooks serving.GatewayServer overrides, and the state its shutdown reads
SERVER_METHODS = {
    "__init__": ["self", "config"],
    "capture_signals": ["self"],
    "handle_exit": ["self", "sig", "frame"],
    "on_tick": ["self", "counter"],
    "shutdown": ["self", "sockets"],
}


@pytest.mark.parametrize("name", sorted(SERVER_METHODS))
def test_server_hooks_serving_py_overrides_keep_their_signature(name: str) -> None:
    assert _parameters(getattr(uvicorn.Server, name)) == SERVER_METHODS[name]
    assert name == "__init__" or name in vars(GatewayServer), f"GatewayServer no longer overrides {name}"


def test_server_state_serving_py_reads_is_still_there() -> None:
    assert {
        "started",
        "should_exit",
        "force_exit",
        "servers",
        "lifespan",
        "server_state",
    } <= _assigned_attributes(uvicorn.Server)
    assert {"connections", "tasks"} <= _assigned_attributes(ServerState)
    assert "handshake_complete" in _assigned_attributes(WSProtocol)
    assert callable(getattr(WSProtocol, "shutdown", None)) and callable(
        getattr(HttpToolsProtocol, "shutdown", None)
    )
