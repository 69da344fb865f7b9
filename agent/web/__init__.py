"""The technician's status page: ``station-agent web``, a separate process.

It talks to the daemon only over the control socket (read-only commands plus ``selftest`` and
``outbox.retry``), so a crash or a bug in it cannot touch charging. See the README section
"Status page" for the security model.
"""
