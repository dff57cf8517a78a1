"""Errors a user can act on. The command-line entry points print them as one line
(``error: ...``) and exit with status 1 instead of a traceback."""


class AudiolabError(Exception):
    """A problem with the user's input (path, checkpoint, config), not a bug."""


class CheckpointError(AudiolabError):
    """A checkpoint is missing or is not a checkpoint written by audiolab."""


class ResumeError(AudiolabError):
    """``resume=...`` names no run that can be continued, or asks for a change a resumed
    run cannot take."""
