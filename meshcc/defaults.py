"""Numbers distcc users already know, in one place: ports, host limits and local shares."""

DISTCC_PORT = 3632  # distccd's TCP port: compile jobs
STATUS_PORT = 3633  # distccd's stats port; meshcc serves its status and meshcc.pyz there

TCP_HOST_LIMIT = 4  # jobs per TCP host when the host spec gives no /LIMIT
SSH_HOST_LIMIT = 4  # jobs per SSH host when the host spec gives no /LIMIT
LOCALHOST_SHARE = 2  # this box's own share in a host list: distcc's `localhost/2`
LOCAL_SLOTS = 4  # concurrent local compiles (distcc's --localslots)
LOCAL_SLOTS_CPP = 8  # concurrent local preprocessors (distcc's --localslots_cpp)
