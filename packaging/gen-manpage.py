#!/usr/bin/env python3
"""Writes the chat-backend(1) man page from the command line itself.

    packaging/gen-manpage.py BINARY > chat-backend.1

Commands, arguments, options and their help texts come from `BINARY --experimental-dump-help`
(swift-argument-parser's description of the whole command tree, the same data its
generate-manual plugin reads), so the page cannot drift from `--help`. Only the sections about
the installed system (files, environment, exit codes) are written here. The date is
SOURCE_DATE_EPOCH's (dpkg-buildpackage sets it from debian/changelog), so the page is
reproducible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# Characters man(1) renders poorly in some locales, spelled in ASCII.
ASCII = {"…": "...", "⇄": "<->", "→": "->", "‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-"}


def roff(text: str) -> str:
    """Escapes plain text for roff: backslashes, hyphens, and a leading control character."""
    for char, plain in ASCII.items():
        text = text.replace(char, plain)
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines)


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def flag_name(arg: dict) -> str:
    """`--name` (or `-n`) as the user types it."""
    name = arg["preferredName"]
    return ("--" if name["kind"] == "long" else "-") + name["name"]


def usage(arg: dict) -> str:
    """One argument as shown in a synopsis: `--port <port>`, `<file>`, `[--admin]`."""
    if arg["kind"] == "positional":
        text = italic(arg["valueName"].upper())
    elif arg["kind"] == "flag":
        text = bold(flag_name(arg))
    else:
        text = f"{bold(flag_name(arg))} {italic(arg['valueName'].upper())}"
    return f"[{text}]" if arg.get("isOptional") else text


def describe(arg: dict) -> str:
    """A `.TP` entry: the argument, then its help text and default."""
    if arg["kind"] == "positional":
        head = italic(arg["valueName"].upper())
    else:
        names = [("--" if n["kind"] == "long" else "-") + n["name"] for n in arg["names"]]
        head = ", ".join(bold(n) for n in dict.fromkeys(names))
        if arg["kind"] == "option":
            head += " " + italic(arg["valueName"].upper())
    text = arg.get("abstract") or ""
    if arg.get("discussion"):
        text += " " + arg["discussion"]
    if arg.get("defaultValue"):
        text += f" (default: {arg['defaultValue']})"
    return f".TP\n{head}\n{roff(text.strip())}\n"


def visible(args: list[dict]) -> list[dict]:
    """The arguments worth documenting: not hidden, not --help and --version (described once)."""
    skip = {"help", "version"}
    return [a for a in args if a.get("shouldDisplay", True)
            and not ({n["name"] for n in a.get("names", [])} & skip)]


def leaves(command: dict, path: list[str]) -> list[tuple[list[str], dict]]:
    """Every runnable command (`user add`, not `user`), in the order the CLI lists them; no `help`."""
    found = []
    for sub in command.get("subcommands", []):
        if sub["commandName"] == "help" or not sub.get("shouldDisplay", True):
            continue
        name = path + [sub["commandName"]]
        found += leaves(sub, name) if sub.get("subcommands") else [(name, sub)]
    return found


def key(arg: dict) -> str:
    return json.dumps({k: arg.get(k) for k in ("kind", "names", "valueName", "abstract")}, sort_keys=True)


def page(tool: dict, version: str, date: str) -> str:
    root = tool["command"]
    name = root["commandName"]
    commands = leaves(root, [])
    # Options several commands share (the configuration options) are described once.
    counts: dict[str, int] = {}
    for _, cmd in commands:
        for arg in visible(cmd.get("arguments", [])):
            counts[key(arg)] = counts.get(key(arg), 0) + 1
    shared_keys = {k for k, n in counts.items() if n > 1}
    shared: list[dict] = []
    for _, cmd in commands:
        for arg in visible(cmd.get("arguments", [])):
            if key(arg) in shared_keys and key(arg) not in {key(a) for a in shared}:
                shared.append(arg)

    out = [f'.TH {name.upper()} 1 "{date}" "{name} {version}" "User Commands"']
    out.append(".SH NAME")
    out.append(f"{name} \\- {roff(root['abstract'])}")

    out.append(".SH SYNOPSIS")
    for path, cmd in commands:
        args = visible(cmd.get("arguments", []))
        words = [bold(" ".join([name] + path))]
        if any(key(a) in shared_keys for a in args):
            words.append(f"[{italic('CONFIGURATION OPTIONS')}]")
        words += [usage(a) for a in args if key(a) not in shared_keys]
        out.append(".br\n" + " ".join(words))
    out.append(".br\n" + f"{bold(name)} [{bold('--version')}] [{bold('--help')}]")

    out.append(".SH DESCRIPTION")
    out.append(roff(
        f"{name} is a self-hosted chat server: a JSON HTTP API for accounts, chat sessions and messages, "
        "a WebSocket at /ws and Socket.IO at /socket.io/ for live delivery, with its data in SQLite or "
        "PostgreSQL. Installed from its Debian package it runs as the systemd service chat-backend.service "
        "(optionally socket-activated by chat-backend.socket) under the chat-backend user. Without a "
        "command it runs serve."))
    out.append(".PP")
    out.append(roff(
        "Every command reads its configuration from the env file, then the environment, then the "
        "command line (later wins), except copy and version, which read none. "
        f"`{name} help COMMAND` or `{name} COMMAND --help` describes one command."))

    out.append(".SH COMMANDS")
    for path, cmd in commands:
        out.append(f'.SS "{roff(" ".join([name] + path))}"')
        paragraphs = [cmd.get("abstract", "")] + ([cmd["discussion"]] if cmd.get("discussion") else [])
        out.append("\n.PP\n".join(roff(p) for p in paragraphs))
        own = [a for a in visible(cmd.get("arguments", [])) if key(a) not in shared_keys]
        if any(key(a) in shared_keys for a in visible(cmd.get("arguments", []))):
            out.append(".PP\nAccepts the configuration options.")
        for arg in own:
            out.append(describe(arg).rstrip("\n"))

    if shared:
        out.append(".SH CONFIGURATION OPTIONS")
        out.append(roff("--config names the env file; each other option wins over the setting of the same name in the env file and the environment."))
        for arg in shared:
            out.append(describe(arg).rstrip("\n"))
    out.append(".SH GENERAL OPTIONS")
    out.append(f".TP\n{bold('--version')}\n{roff('Print the version and exit.')}")
    out.append(f".TP\n{bold('-h')}, {bold('--help')}\n{roff('Describe the command and its options.')}")

    out.append(".SH FILES")
    for path, text in (
        ("/etc/chat-backend/chat-backend.env",
         "Settings, one KEY=VALUE a line, every key commented and explained. Owned by root, group "
         "chat-backend, mode 0640: the service reads it, it may hold secrets."),
        ("/var/lib/chat-backend/chat.db",
         "The SQLite database (with chat.db-wal and chat.db-shm while the server runs), unless "
         "DATABASE_URL names PostgreSQL."),
        ("/var/lib/chat-backend/jwt-secret",
         "The key that signs access tokens, generated on first start unless JWT_SECRET is set."),
        ("/lib/systemd/system/chat-backend.service, chat-backend.socket",
         "The systemd units; change them with systemctl edit."),
    ):
        out.append(f".TP\n{italic(path)}\n{roff(text)}")

    out.append(".SH ENVIRONMENT")
    for var, text in (
        ("STATE_DIRECTORY",
         "Where the database and jwt-secret live; systemd sets it to /var/lib/chat-backend. Outside "
         "systemd it defaults to ./data. Run commands against the service's data as "
         "`sudo -u chat-backend env STATE_DIRECTORY=/var/lib/chat-backend chat-backend COMMAND`."),
        ("CHAT_BACKEND_CONFIG", "The env file to read instead of /etc/chat-backend/chat-backend.env (--config wins). "
                                "A file named here must exist; /dev/null names none."),
        ("HOST, PORT, DATABASE_URL, LOG_LEVEL, JWT_SECRET, ...",
         "Every setting of the env file may also be given as an environment variable, which wins over the file."),
    ):
        out.append(f".TP\n{bold(var)}\n{roff(text)}")

    out.append(".SH EXIT STATUS")
    for code, text in (("0", "Success."), ("64", "Invalid command-line usage."),
                       ("65", "A database error (a damaged database, a username already taken), or a database migrated by a "
                              "different or newer release."),
                       ("67", "export-user: no user by that name."),
                       ("69", "The database is unavailable."),
                       ("70", "An internal error (a bug: please report it with the message)."),
                       ("71", "serve cannot listen on its address and port."),
                       ("73", "An output file already exists or cannot be created."),
                       ("74", "Writing an output file failed."),
                       ("78", "A configuration error, or copy refused a database (not empty, empty source, "
                              "open in a running server) or found counts that differ.")):
        out.append(f".TP\n{bold(code)}\n{roff(text)}")

    out.append(".SH EXAMPLES")
    out.append(roff("Back up the service's SQLite database while it runs, and restore it:"))
    out.append(".PP\n.nf\n.RS 4\n" + roff(
        "sudo -u chat-backend env STATE_DIRECTORY=/var/lib/chat-backend \\\n"
        "    chat-backend backup /var/lib/chat-backend/chat-$(date +%F).db\n"
        "sudo systemctl stop chat-backend\n"
        "sudo rm -f /var/lib/chat-backend/chat.db-wal /var/lib/chat-backend/chat.db-shm\n"
        "sudo install -m 0600 -o chat-backend -g chat-backend BACKUP.db /var/lib/chat-backend/chat.db\n"
        "sudo systemctl start chat-backend") + "\n.RE\n.fi")
    out.append(".SH SEE ALSO")
    out.append("\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.service\\fR(5), \\fBsystemd.socket\\fR(5), "
               "/usr/share/doc/chat\\-backend/README.md.gz, /usr/share/doc/chat\\-backend/openapi.yaml.gz")
    return "\n".join(out) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} BINARY > chat-backend.1")
    binary = sys.argv[1]
    tool = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True).stdout)
    if tool.get("serializationVersion") != 0:
        sys.exit(f"unknown --experimental-dump-help format {tool.get('serializationVersion')!r}; update {sys.argv[0]}")
    version = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True).stdout.split()[-1]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    sys.stdout.write(page(tool, version, date))


if __name__ == "__main__":
    main()
