"""The two kinds of failure the project reports, so that the CLI can map each to one exit code."""


class BadInput(ValueError):
    """Refused before any work: the model, the data or the settings cannot give a correct checkpoint
    (`vlmq` exits with 2)."""


class RunFailed(RuntimeError):
    """The run started and could not finish (e.g. a layer produced non-finite activations); nothing was
    written (`vlmq` exits with 1)."""
