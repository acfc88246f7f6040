"""meshcc.transport.ssh: distcc 3.4's ssh command line (src/ssh.c) and how an ssh exit is told.

The transport itself runs against a real sshd in integration/test_ssh.py."""

import pytest

from meshcc.transport.ssh import describe_status, ssh_argv, ssh_command

TAIL = ["--inetd", "--enable-tcp-insecure"]


@pytest.mark.parametrize(
    "value,words",
    [
        (None, ["ssh"]),
        ("", ["ssh"]),
        ("   ", ["ssh"]),
        ("ssh", ["ssh"]),
        ("/usr/bin/ssh -F /x/cfg", ["/usr/bin/ssh", "-F", "/x/cfg"]),
        ("ssh  -p 2222 ", ["ssh", "-p", "2222"]),  # runs of spaces are one separator
        ("ssh\t-q", ["ssh\t-q"]),  # only spaces separate, as distcc's strtok(" ")
        ('ssh -o "A B"', ["ssh", "-o", '"A', 'B"']),  # no quoting
    ],
)
def test_distcc_ssh_split(value, words):
    env = {} if value is None else {"DISTCC_SSH": value}
    assert ssh_command(env) == words


def test_more_than_twelve_words_are_kept():
    """distcc 3.4 silently drops words past the twelfth; meshcc keeps them all."""
    words = ["ssh", *[f"-o{i}" for i in range(20)]]
    assert ssh_command({"DISTCC_SSH": " ".join(words)}) == words


def test_argv_layout():
    assert ssh_argv("box", None, None, {}) == ["ssh", "box", "distccd", *TAIL]
    assert ssh_argv("box", "", "/opt/meshcc", {}) == ["ssh", "box", "/opt/meshcc", *TAIL]
    env = {"DISTCC_SSH": "ssh -F cfg"}
    assert ssh_argv("box", "me", "meshcc", env) == [
        "ssh",
        "-F",
        "cfg",
        "-l",
        "me",
        "box",
        "meshcc",
        *TAIL,
    ]


def _exited(code: int) -> int:
    return code << 8


def test_status_words():
    assert "an ssh error" in describe_status("ssh", _exited(255))
    assert "not found" in describe_status("ssh", _exited(127))
    assert describe_status("ssh", _exited(1)) == "ssh exited with status 1"
    assert describe_status("ssh", 9) == "ssh was killed by signal 9"
