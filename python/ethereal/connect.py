"""How each coding tool and SDK reaches this gateway: the one source of the set-up snippets.

The console's key page shows them filled in with a freshly minted key, ``ethereal connect TOOL``
prints them, docs/clients.md explains them, and the client tests (tests/e2e/test_coding_tools.py,
tests/e2e/test_aider.py) configure the real tools from them, so what a user copies is what CI ran.

A snippet is made of environment variables, files (``~/`` is the home directory, any other path
is relative to the project directory the tool runs in), set-up commands and the command that
starts the tool. Three placeholders are filled in by ``render``: ``<base_url>`` (the gateway's
public URL, no trailing slash), ``<key>`` (the API key) and ``<model>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ethereal.models import load_registry

KEY = "<key>"
BASE_URL = "<base_url>"
MODEL = "<model>"
# the model a snippet names, and its context window (Zed asks for it): the registry's data
_DEFAULT = load_registry().default_model
DEFAULT_MODEL = _DEFAULT.id


@dataclass(frozen=True)
class File:
    path: str  # "~/.claude/settings.json" (home) or "opencode.json" (project directory)
    text: str
    merge: str = ""  # how to add it to an existing file of the same name (shown as a comment)


@dataclass(frozen=True)
class Setup:
    id: str  # what `ethereal connect` takes
    name: str
    route: str  # the gateway route the tool uses
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[File, ...] = ()
    commands: tuple[str, ...] = ()  # one-time set-up commands, run before the tool
    run: str = ""  # how to start the tool (interactive)
    steps: tuple[str, ...] = ()  # what to click, for the GUI editors (no file or variable to set)
    tested: bool = True  # driven through the gateway by `make test`
    package: str = ""  # npm or PyPI package that installs it
    notes: tuple[str, ...] = field(default=())

    def render(self, key: str = KEY, base_url: str = BASE_URL, model: str = DEFAULT_MODEL) -> str:
        """The snippet as text a user pastes into a shell or follows, with the values filled in."""
        lines = [f"# {self.name}: {self.route}{'' if self.tested else ' (untested)'}"]
        for step in self.steps:
            lines.append(f"# {fill(step, key, base_url, model)}")
        for f in self.files:
            lines.append(f"# {f.path}{' (' + f.merge + ')' if f.merge else ''}")
            lines.append(fill(f.text, key, base_url, model).rstrip("\n"))
        for name, value in self.env:  # double quotes: keys and URLs hold none of " $ ` \\
            lines.append(f'export {name}="{fill(value, key, base_url, model)}"')
        for cmd in self.commands:
            lines.append(fill(cmd, key, base_url, model))
        if self.run:
            lines.append(fill(self.run, key, base_url, model))
        for note in self.notes:
            lines.append(f"# {fill(note, key, base_url, model)}")
        return "\n".join(lines) + "\n"

    def environment(self, key: str, base_url: str, model: str = DEFAULT_MODEL) -> dict[str, str]:
        return {name: fill(value, key, base_url, model) for name, value in self.env}

    def write_files(
        self, home: Path, project: Path, key: str, base_url: str, model: str = DEFAULT_MODEL
    ) -> list[Path]:
        """Write the snippet's files under ``home`` (``~/``) and ``project``; returns their paths."""
        written = []
        for f in self.files:
            path = home / f.path[2:] if f.path.startswith("~/") else project / f.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fill(f.text, key, base_url, model))
            written.append(path)
        return written

    def as_json(self, key: str = KEY, base_url: str = BASE_URL, model: str = DEFAULT_MODEL) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "route": self.route,
            "tested": self.tested,
            "snippet": self.render(key, base_url, model),
        }


def fill(text: str, key: str, base_url: str, model: str = DEFAULT_MODEL) -> str:
    return text.replace(BASE_URL, base_url.rstrip("/")).replace(KEY, key).replace(MODEL, model)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _opencode(
    id: str, provider: str, route: str, kind: str = "", notes: tuple[str, ...] = (), **extra: str
) -> Setup:
    """OpenCode with the gateway as ``provider``: one OpenCode knows (its ``options`` point it
    here), or a custom one of ``kind`` that ``extra`` declares."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": f"{provider}/{MODEL}",
        "small_model": f"{provider}/{MODEL}",
        "provider": {
            provider: {
                **extra,
                "options": {"baseURL": f"{BASE_URL}/v1", "apiKey": "{env:ETHEREAL_API_KEY}"},
                "models": {MODEL: {}},
            }
        },
    }
    return Setup(
        id,
        f"OpenCode ({kind or provider} provider)",
        route,
        files=(File("~/.config/opencode/opencode.json", _json(config)),),
        env=(("ETHEREAL_API_KEY", KEY),),
        run="opencode",
        package="opencode-ai",
        notes=notes,
    )


def _continue(id: str, provider: str, route: str) -> Setup:
    """The Continue CLI with the gateway as its ``provider``."""
    config = (
        "name: ethereal\n"
        "version: 1.0.0\n"
        "schema: v1\n"
        "models:\n"
        f"  - name: {MODEL} via ethereal\n"
        f"    provider: {provider}\n"
        f"    model: {MODEL}\n"
        f"    apiBase: {BASE_URL}/v1/\n"
        f"    apiKey: {KEY}\n"
        "    roles: [chat, edit, apply]\n"
    )
    return Setup(
        id,
        f"Continue CLI ({provider} provider)",
        route,
        files=(File("~/.continue/config.yaml", config),),
        run="cn --config ~/.continue/config.yaml",
        package="@continuedev/cli",
    )


SETUPS: tuple[Setup, ...] = (
    Setup(
        "claude-code",
        "Claude Code",
        "POST /v1/messages (native)",
        files=(
            File(
                "~/.claude/settings.json",
                _json(
                    {
                        "env": {
                            "ANTHROPIC_BASE_URL": BASE_URL,
                            "ANTHROPIC_AUTH_TOKEN": KEY,
                        }
                    }
                ),
                'merge the "env" entries into an existing file',
            ),
        ),
        run="claude",
        package="@anthropic-ai/claude-code",
        notes=(
            (
                "ANTHROPIC_AUTH_TOKEN is sent as a Bearer token and skips the first-run "
                "'use this API key?' question (its default answer is No)"
            ),
        ),
    ),
    Setup(
        "codex",
        "Codex CLI",
        "POST /v1/responses (translated; HTTP streaming)",
        files=(
            File(
                "~/.codex/config.toml",
                f'model = "{MODEL}"\n'
                'model_provider = "ethereal"\n'
                "\n"
                "[model_providers.ethereal]\n"
                'name = "ethereal"\n'
                f'base_url = "{BASE_URL}/v1"\n'
                'env_key = "ETHEREAL_API_KEY"\n'
                'wire_api = "responses"\n',
                "add the provider table to an existing file",
            ),
        ),
        env=(("ETHEREAL_API_KEY", KEY),),
        run="codex",
        package="@openai/codex",
    ),
    _opencode("opencode", "anthropic", "POST /v1/messages (native)"),
    _opencode(
        "opencode-openai",
        "openai",
        "POST /v1/responses (translated)",
        notes=(
            "small_model: without it OpenCode asks gpt-5.4-nano for session titles, a model the gateway "
            "does not serve",
        ),
    ),
    _opencode(
        "opencode-compatible",
        "ethereal",
        "POST /v1/chat/completions (translated)",
        kind="openai-compatible",
        npm="@ai-sdk/openai-compatible",
        name="ethereal",
    ),
    _continue("continue", "anthropic", "POST /v1/messages (native)"),
    _continue("continue-openai", "openai", "POST /v1/chat/completions (translated)"),
    Setup(
        "aider",
        "Aider (anthropic mode)",
        "POST /v1/messages (native)",
        # Aider sends temperature 0 to a model it has no settings for; today's models take only the
        # default sampling parameters (a 400 from the API, passed through on the native route)
        files=(
            File(
                "~/.aider.model.settings.yml",
                f"- name: anthropic/{MODEL}\n  use_temperature: false\n",
                "add the entry to your model settings",
            ),
        ),
        env=(("ANTHROPIC_API_BASE", BASE_URL), ("ANTHROPIC_API_KEY", KEY)),
        run=f"aider --model anthropic/{MODEL}",
        package="aider-chat",
    ),
    Setup(
        "aider-openai",
        "Aider (OpenAI-compatible mode)",
        "POST /v1/chat/completions (translated)",
        env=(("OPENAI_API_BASE", f"{BASE_URL}/v1"), ("OPENAI_API_KEY", KEY)),
        run=f"aider --model openai/{MODEL}",
        package="aider-chat",
    ),
    Setup(
        "qwen-code",
        "Qwen Code",
        "POST /v1/chat/completions (translated)",
        env=(("OPENAI_BASE_URL", f"{BASE_URL}/v1"), ("OPENAI_API_KEY", KEY), ("OPENAI_MODEL", MODEL)),
        run="qwen --auth-type openai",
        package="@qwen-code/qwen-code",
    ),
    Setup(
        "kilo-code",
        "Kilo Code CLI",
        "POST /v1/messages (native)",
        files=(
            File(
                "~/.config/kilo/kilo.json",
                _json(
                    {
                        "model": f"anthropic/{MODEL}",
                        "small_model": f"anthropic/{MODEL}",
                        "provider": {
                            "anthropic": {"options": {"baseURL": f"{BASE_URL}/v1"}, "models": {MODEL: {}}}
                        },
                    }
                ),
            ),
        ),
        env=(("ANTHROPIC_API_KEY", KEY),),
        run="kilo",
        package="@kilocode/cli",
        notes=("the key comes from ANTHROPIC_API_KEY: this release rejects an {env:…} apiKey in kilo.json",),
    ),
    Setup(
        "cline",
        "Cline CLI (OpenAI-compatible)",
        "POST /v1/chat/completions (translated)",
        commands=(f'cline auth -p openai -k "{KEY}" -m {MODEL} -b {BASE_URL}/v1',),
        run='cline "your task"',
        package="cline",
        notes=("Cline's Anthropic provider cannot take a base URL: use the OpenAI-compatible one",),
    ),
    Setup(
        "cursor",
        "Cursor",
        "POST /v1/chat/completions (translated), sent from Cursor's servers",
        steps=(
            "Settings → Models → API Keys: OpenAI API Key = <key>",
            "turn on Override OpenAI Base URL = <base_url>/v1",
            "add the custom model <model> and select it",
        ),
        tested=False,
        notes=(
            (
                "Cursor builds each request on its own servers and sends it from there: <base_url> must be "
                "reachable from the internet over HTTPS, not only from your machine"
            ),
        ),
    ),
    Setup(
        "zed",
        "Zed",
        "POST /v1/messages (native), sent from the editor",
        files=(
            File(
                "~/.config/zed/settings.json",
                _json(
                    {
                        "language_models": {
                            "anthropic": {
                                "api_url": BASE_URL,
                                "available_models": [
                                    {
                                        "name": MODEL,
                                        "display_name": f"{MODEL} (ethereal)",
                                        "max_tokens": _DEFAULT.context_window,
                                    }
                                ],
                            }
                        }
                    }
                ),
                "merge into your settings",
            ),
        ),
        env=(("ANTHROPIC_API_KEY", KEY),),
        run="zed",
        tested=False,
        notes=("or paste the key in Agent settings → Anthropic; Zed calls the URL from your machine",),
    ),
    Setup(
        "windsurf",
        "Windsurf",
        "none: no custom base URL",
        steps=(
            (
                "Windsurf's Cascade takes no custom base URL: its own models run on Windsurf's servers and its "
                "bring-your-own-key option sends an Anthropic key to Windsurf, not to your gateway"
            ),
            "use a CLI from this list in Windsurf's terminal instead",
        ),
        tested=False,
    ),
    Setup(
        "anthropic-sdk",
        "Anthropic SDKs (Python, TypeScript)",
        "POST /v1/messages (native)",
        env=(("ANTHROPIC_BASE_URL", BASE_URL), ("ANTHROPIC_API_KEY", KEY)),
        run='python -c "import anthropic; print(anthropic.Anthropic().messages.create('
        f"model='{MODEL}', max_tokens=64, messages=[{{'role': 'user', 'content': 'hi'}}]).content)\"",
        package="anthropic, @anthropic-ai/sdk",
    ),
    Setup(
        "openai-sdk",
        "OpenAI SDKs (Python, TypeScript)",
        "POST /v1/chat/completions, /v1/responses (translated)",
        env=(("OPENAI_BASE_URL", f"{BASE_URL}/v1"), ("OPENAI_API_KEY", KEY)),
        run='python -c "import openai; print(openai.OpenAI().chat.completions.create('
        f"model='{MODEL}', messages=[{{'role': 'user', 'content': 'hi'}}]).choices[0].message.content)\"",
        package="openai",
    ),
)

BY_ID = {s.id: s for s in SETUPS}


def get(tool: str) -> Setup:
    try:
        return BY_ID[tool]
    except KeyError:
        raise KeyError(f"unknown tool {tool!r}: one of {', '.join(BY_ID)}") from None


def default_base_url(public_url: str | None, host: str, port: int, base_path: str = "") -> str:
    """Where clients reach the gateway: ETHEREAL_PUBLIC_URL, else the listening host and port."""
    if public_url:
        return public_url.rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{base_path.rstrip('/')}"
