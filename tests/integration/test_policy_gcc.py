"""meshcc.compiler.policy's job rewriting against real gcc: a crafted job cannot make gcc read
or show the server's files (the rules themselves: unit/test_policy.py)."""

import shutil
import subprocess

import pytest

from meshcc.compiler.policy import refusal, rewrite_for_job

GCC = shutil.which("gcc")


@pytest.mark.skipif(GCC is None, reason="gcc not installed")
def test_forced_language_keeps_preprocessor_off(tmp_path):
    """A stock client's `-x c` with a crafted #include must not read server files."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET_TOKEN_XYZ\n")
    inp = tmp_path / "in.i"
    inp.write_text(f'#include "{secret}"\nint x;\n')
    argv = ["gcc", "-x", "c", "-c", "hello.c", "-o", "hello.o"]
    assert refusal(argv) is None
    run = rewrite_for_job(argv, str(inp), str(tmp_path / "o.o"))
    res = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert "SECRET_TOKEN_XYZ" not in res.stderr + res.stdout


@pytest.mark.skipif(GCC is None, reason="gcc not installed")
def test_caret_lines_do_not_echo_server_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET_TOKEN_XYZ = 1;\n")
    inp = tmp_path / "in.i"
    inp.write_text(f'# 1 "{secret}"\nint x = ;\n')
    run = rewrite_for_job(["gcc", "-c", "a.c"], str(inp), str(tmp_path / "o.o"))
    res = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0 and "SECRET_TOKEN_XYZ" not in res.stderr
    # and without the hardening gcc would have shown it (the test is meaningful)
    run = rewrite_for_job(
        ["gcc", "-c", "a.c"], str(inp), str(tmp_path / "o.o"), hide_source_lines=False
    )
    res = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert "SECRET_TOKEN_XYZ" in res.stderr
