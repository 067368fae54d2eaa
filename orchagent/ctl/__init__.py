"""orchagent-ctl, the operator's command-line client of orchagent's API (see :mod:`orchagent.ctl.cli`)."""
