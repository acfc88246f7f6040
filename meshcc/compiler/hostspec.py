"""distcc 3.4's host list grammar (``DISTCC_HOSTS``, ``~/.distcc/hosts``, ``/etc/distcc/hosts``).

Public API::

    class HostSpecError(ValueError)     message names the source, the token and the problem
    class Host:                         one host (plain slotted class)
        kind: str                       'tcp' | 'ssh' | 'localhost'
        host: str                       hostname / IPv4 / IPv6 without brackets ('localhost')
        port: int | None                TCP port (3632 by default); None for ssh/localhost
        limit: int                      job slots (defaults: tcp 4, ssh 4, localhost 2)
        protocol: int                   1, 2 (,lzo) or 3 (,cpp,lzo)
        lzo, cpp, down, auth: bool
        auth_name: str | None           ,auth=NAME
        user: str | None                ssh user ('' for '@host': ssh's default)
        command: str | None             ssh remote command (None: distcc's default, distccd)
        spec: str                       the token as written
        lock_name: str (property)       distcc's lock stem: tcp_HOST_PORT, ssh_HOST, localhost
        supported: bool (property)      False for ,auth (meshcc has no GSS-API)
        unsupported_reason: str         '' when supported
    class HostList:
        hosts: list[Host]
        localslots: int                 --localslots (default 4)
        localslots_cpp: int             --localslots_cpp (default 8)
        randomize: bool                 --randomize
        zeroconf: bool                  +zeroconf appeared
        zeroconf_index: int | None      position of +zeroconf in hosts (where found hosts go)
        source: str
        total_limit: int (property)     sum of the listed hosts' limits, like `distcc -j`
    parse_hosts(text: str, source: str = "DISTCC_HOSTS") -> HostList
    load_hosts(environ: Mapping[str, str] | None = None,
               system_file: str = "/etc/distcc/hosts") -> HostList
        DISTCC_HOSTS if set (even empty), else $DISTCC_DIR/hosts (DISTCC_DIR defaults to
        ~/.distcc), else /etc/distcc/hosts.

SSH hosts (``[USER]@HOST[/LIMIT][:COMMAND][,OPTIONS]``, any token with an ``@``) are read as
distcc reads them: USER is everything before the first ``@`` (empty: ssh's default), HOST
runs to ``/``, ``:`` or ``,``, COMMAND (the remote server, default ``distccd``) runs to
``,``, an empty COMMAND means the default, and the limit defaults to 4.

Deliberate differences: ``--localslots=0`` is an error here (distcc silently reparses it as a
TCP host called "--localslots=0"); ``--randomize`` must be the whole token; a hostname must
not be empty and a port must be 1-65535; ``=N`` is a limit for SSH hosts too (distcc makes
it part of the host name); an SSH host name may not start with ``-`` (ssh would read it as
an option) nor contain a second ``@``.
"""

from meshcc import posixenv as os  # os without its import cost (the compile client's path)
from meshcc.defaults import (
    DISTCC_PORT,
    LOCAL_SLOTS,
    LOCAL_SLOTS_CPP,
    LOCALHOST_SHARE,
    SSH_HOST_LIMIT,
    TCP_HOST_LIMIT,
)

__all__ = ["SYSTEM_HOSTS_FILE", "Host", "HostList", "HostSpecError", "load_hosts", "parse_hosts"]

SYSTEM_HOSTS_FILE = "/etc/distcc/hosts"
_SEPARATORS = " #\t\n\f\r"
_HOST_END = "/:,=" + _SEPARATORS  # a TCP host name runs up to one of these


class HostSpecError(ValueError):
    """A host list that cannot be used; str() says where, which token and what is wrong."""


class Host:
    """One entry of a host list."""

    __slots__ = (
        "auth",
        "auth_name",
        "command",
        "cpp",
        "down",
        "host",
        "kind",
        "limit",
        "lzo",
        "port",
        "spec",
        "user",
    )

    def __init__(
        self,
        kind: str,
        host: str,
        spec: str,
        limit: int,
        port: int | None = None,
        user: str | None = None,
        command: str | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.limit = limit
        self.lzo = False
        self.cpp = False
        self.down = False
        self.auth = False
        self.auth_name: str | None = None
        self.user = user
        self.command = command
        self.spec = spec

    @property
    def protocol(self) -> int:
        """distcc's choice: 1 by default, 2 with ,lzo, 3 with ,cpp,lzo (pump mode)."""
        if self.cpp:
            return 3
        return 2 if self.lzo else 1

    @property
    def lock_name(self) -> str:
        if self.kind == "tcp":
            return f"tcp_{self.host}_{self.port}"
        if self.kind == "ssh":
            return f"ssh_{self.host}"
        return "localhost"

    @property
    def unsupported_reason(self) -> str:
        if self.auth:
            return f"{self.spec}: GSS-API authentication (,auth) is not supported by meshcc"
        return ""

    @property
    def supported(self) -> bool:
        return not self.unsupported_reason

    def __repr__(self) -> str:
        return (
            f"Host({self.spec!r}, kind={self.kind!r}, host={self.host!r}, port={self.port}, "
            f"limit={self.limit}, protocol={self.protocol})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Host):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    # Mutable and compared by value, so unhashable; typeshed types __hash__ as a method.
    __hash__ = None  # type: ignore[assignment]


class HostList:
    """A parsed host list with its global options."""

    __slots__ = (
        "hosts",
        "localslots",
        "localslots_cpp",
        "randomize",
        "source",
        "zeroconf",
        "zeroconf_index",
    )

    def __init__(self, source: str) -> None:
        self.hosts: list[Host] = []
        self.localslots = LOCAL_SLOTS
        self.localslots_cpp = LOCAL_SLOTS_CPP
        self.randomize = False
        self.zeroconf = False
        self.zeroconf_index: int | None = None
        self.source = source

    @property
    def total_limit(self) -> int:
        return sum(h.limit for h in self.hosts)

    def __repr__(self) -> str:
        return (
            f"HostList(source={self.source!r}, hosts={self.hosts!r}, "
            f"localslots={self.localslots}, localslots_cpp={self.localslots_cpp}, "
            f"randomize={self.randomize}, zeroconf={self.zeroconf})"
        )


def _tokens(text: str) -> list[str]:
    """Split on whitespace; '#' starts a comment that runs to the end of the line."""
    out = []
    for line in text.splitlines():
        hash_at = line.find("#")
        out += (line[:hash_at] if hash_at >= 0 else line).split()
    return out


class _Cursor:
    """A tiny reader over one token, with errors that name the token."""

    __slots__ = ("pos", "source", "tok")

    def __init__(self, tok: str, source: str) -> None:
        self.tok = tok
        self.pos = 0
        self.source = source

    def error(self, what: str) -> HostSpecError:
        return HostSpecError(f"{self.source}: {self.tok!r}: {what}")

    def peek(self) -> str:
        return self.tok[self.pos : self.pos + 1]

    def number(self, what: str) -> int:
        start = self.pos
        while self.pos < len(self.tok) and self.tok[self.pos] in "0123456789":
            self.pos += 1
        if self.pos == start:
            raise self.error(f"{what} must be a number")
        return int(self.tok[start : self.pos])

    def mult(self) -> int:
        """MULT = ('/' | '=') decimal > 0; the caller has seen the '/' or '='."""
        self.pos += 1
        n = self.number("job limit after '/'")
        if n <= 0:
            raise self.error("job limit must be at least 1")
        return n

    def until(self, stops: str) -> str:
        start = self.pos
        while self.pos < len(self.tok) and self.tok[self.pos] not in stops:
            self.pos += 1
        return self.tok[start : self.pos]


def _options(cur: _Cursor, host: Host) -> None:
    """OPTIONS = { ',lzo' | ',cpp' | ',down' | ',auth' ['=' NAME] }, to the end of the token."""
    while cur.pos < len(cur.tok):
        if cur.peek() != ",":
            raise cur.error(f"unexpected {cur.tok[cur.pos :]!r}; options start with ','")
        cur.pos += 1
        word = cur.until(",=")
        if word == "lzo":
            host.lzo = True
        elif word == "cpp":
            host.cpp = True
        elif word == "down":
            host.down = True
        elif word == "auth":
            host.auth = True
            if cur.peek() == "=":
                cur.pos += 1
                name = cur.until(",")
                if not name:
                    raise cur.error("',auth=' needs a service name")
                host.auth_name = name
        else:
            raise cur.error(f"unknown option ',{word}' (known: ,lzo ,cpp ,down ,auth)")
    if host.cpp and not host.lzo:
        raise cur.error("',cpp' (pump mode) needs ',lzo' too")


def _parse_localhost(cur: _Cursor) -> Host:
    limit = LOCALHOST_SHARE
    cur.pos = len("localhost")
    if cur.peek() == "/":
        limit = cur.mult()
    if cur.pos != len(cur.tok):
        raise cur.error(
            "only 'localhost' or 'localhost/N' is the local host; use 127.0.0.1 "
            "for a TCP connection"
        )
    return Host("localhost", "localhost", cur.tok, limit)


def _parse_ssh(cur: _Cursor) -> Host:
    at = cur.tok.index("@")
    user = cur.tok[:at]
    cur.pos = at + 1
    name = cur.until("/:,=")
    if not name:
        raise cur.error("missing host name after '@'")
    if name.startswith("-"):
        raise cur.error("an SSH host name cannot start with '-' (ssh would take it as an option)")
    if "@" in name:
        raise cur.error("more than one '@'; write USER@HOST")
    limit = SSH_HOST_LIMIT
    if cur.peek() in ("/", "="):
        limit = cur.mult()
    command = None
    if cur.peek() == ":":
        cur.pos += 1
        command = cur.until(",") or None  # distcc: an empty command is the default one
    host = Host("ssh", name, cur.tok, limit, user=user, command=command)
    _options(cur, host)
    return host


def _parse_tcp(cur: _Cursor) -> Host:
    if cur.peek() == "[":
        end = cur.tok.find("]")
        if end < 0:
            raise cur.error("missing ']' after IPv6 address")
        name = cur.tok[1:end]
        if not name or ":" not in name:
            raise cur.error("brackets must hold an IPv6 address")
        cur.pos = end + 1
    else:
        name = cur.until(_HOST_END)
        if not name:
            raise cur.error("missing host name")
        if cur.peek() == ":" and ":" in cur.tok[cur.pos + 1 :].split(",")[0].split("/")[0]:
            raise cur.error("IPv6 addresses must be written in brackets, e.g. [::1]:3632")
    limit = None
    port = DISTCC_PORT
    if cur.peek() in ("/", "="):
        limit = cur.mult()
    if cur.peek() == ":":
        cur.pos += 1
        port = cur.number("port")
        if not 1 <= port <= 65535:
            raise cur.error("port must be 1-65535")
        if cur.peek() in ("/", "="):
            if limit is not None:
                raise cur.error("job limit given twice")
            limit = cur.mult()
    elif cur.peek() not in ("", ","):
        raise cur.error(f"unexpected {cur.tok[cur.pos :]!r} after the host name")
    host = Host("tcp", name, cur.tok, TCP_HOST_LIMIT if limit is None else limit, port=port)
    _options(cur, host)
    return host


def _parse_slots(cur: _Cursor, name: str) -> int:
    cur.pos = len(name)
    if cur.peek() not in ("=", "/"):
        raise cur.error(f"{name} needs a value, e.g. {name}=4")
    n = cur.mult()
    if cur.pos != len(cur.tok):
        raise cur.error(f"unexpected {cur.tok[cur.pos :]!r} after the number")
    return n


def parse_hosts(text: str, source: str = "DISTCC_HOSTS") -> HostList:
    """Parse a host list; ``source`` (e.g. "DISTCC_HOSTS" or a file path) names it in errors."""
    result = HostList(source)
    for tok in _tokens(text):
        cur = _Cursor(tok, source)
        if tok == "--randomize":
            result.randomize = True
        elif tok.startswith("--localslots_cpp"):
            result.localslots_cpp = _parse_slots(cur, "--localslots_cpp")
        elif tok.startswith("--localslots"):
            result.localslots = _parse_slots(cur, "--localslots")
        elif tok == "+zeroconf":
            result.zeroconf = True
            result.zeroconf_index = len(result.hosts)
        elif tok.startswith(("-", "+")):
            raise cur.error(
                "unknown option (known: --randomize, --localslots=N, --localslots_cpp=N, +zeroconf)"
            )
        elif tok == "localhost" or tok.startswith("localhost/"):
            result.hosts.append(_parse_localhost(cur))
        elif "@" in tok:
            result.hosts.append(_parse_ssh(cur))
        else:
            result.hosts.append(_parse_tcp(cur))
    if not result.hosts and not result.zeroconf:
        raise HostSpecError(f"{source}: contained no hosts")
    return result


def load_hosts(
    environ: "os.Env | dict[str, str] | None" = None, system_file: str = SYSTEM_HOSTS_FILE
) -> HostList:
    """Find and parse the host list the way distcc 3.4 does (``system_file`` is for tests)."""
    env = os.environ if environ is None else environ
    if "DISTCC_HOSTS" in env:
        return parse_hosts(env["DISTCC_HOSTS"], "DISTCC_HOSTS")
    top = env.get("DISTCC_DIR")
    if not top:
        home = env.get("HOME") or os.path.expanduser("~")
        top = os.path.join(home, ".distcc")
    tried = []
    for path in (os.path.join(top, "hosts"), system_file):
        tried.append(path)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        return parse_hosts(text, path)
    raise HostSpecError(
        "no hosts: set DISTCC_HOSTS, write "
        + " or ".join(tried)
        + ", or run `meshcc daemon` so that peers are found automatically"
    )


def with_localhost(peers_line: str) -> str:
    """What a distcc user puts in DISTCC_HOSTS or a hosts file: the peers, best first, then
    this box as ``localhost/2`` (distcc's default share), so its own CPU compiles too
    instead of only preprocessing. Empty when no peer matches: distcc then compiles
    locally by itself."""
    return f"{peers_line} localhost/{LOCALHOST_SHARE}" if peers_line else ""
