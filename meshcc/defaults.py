"""Numbers distcc users already know, in one place: ports, host limits and local shares."""

DISTCC_PORT = 3632  # distccd's TCP port: compile jobs
STATUS_PORT = 3633  # distccd's stats port; meshcc serves its status and meshcc.pyz there

TCP_HOST_LIMIT = 4  # jobs per TCP host when the host spec gives no /LIMIT
SSH_HOST_LIMIT = 4  # jobs per SSH host when the host spec gives no /LIMIT
LOCALHOST_SHARE = 2  # this box's own share in a host list: distcc's `localhost/2`
LOCAL_SLOTS = 4  # concurrent local compiles (distcc's --localslots)
LOCAL_SLOTS_CPP = 8  # concurrent local preprocessors (distcc's --localslots_cpp)


def version_text(lzo: bool) -> str:
    """What ``meshcc --version`` and ``meshcc daemon --version`` print: meshcc's version,
    then distcc's second line (``  (protocols …) (default port N)``), which scripts parse.
    ``lzo``: whether this install can speak protocol 2 (meshcc.pyz alone cannot)."""
    import sysconfig

    from meshcc import __version__

    # distcc prints its configure host triplet; Python's own build has the same one.
    target = sysconfig.get_config_var("HOST_GNU_TYPE") or "unknown-pc-linux-gnu"
    protocols = "protocols 1 and 2" if lzo else "protocol 1"
    return (
        f"meshcc {__version__} {target}\n"
        f"  ({protocols}) (default port {DISTCC_PORT})\n"
        "  wire-compatible with distcc 3.4\n"
    )
