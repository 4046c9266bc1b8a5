"""Exit codes of every AutoChain program (sysexits.h values where one fits).

systemd's unit uses ``RestartPreventExitStatus=77 78`` so neither a bad config nor an unsafe
device key file restart-loops: both need a person (``acc-agent --check-config``; ``acc keys show``).
"""

OK = 0
#: the check asked for failed (invalid attestation, agent unhealthy, ...)
FAILURE = 1
#: wrong command line
USAGE = 2
#: input data was malformed (EX_DATAERR)
DATA_ERROR = 65
#: a needed service (the agent's diagnostics socket) is not there (EX_UNAVAILABLE)
UNAVAILABLE = 69
#: internal error (EX_SOFTWARE)
SOFTWARE = 70
#: cannot open an input or device (EX_NOINPUT / EX_IOERR)
NO_INPUT = 66
#: the device key file is unsafe or unusable (EX_NOPERM): readable by others, owned by another
#: user, not a key. The message says what to run (chmod 600 / chown / acc keys init). Never
#: restarted by systemd.
NOPERM = 77
#: a configuration error (EX_CONFIG): never restarted by systemd
CONFIG = 78
