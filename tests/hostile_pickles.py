"""Pickles that run code when unpickled: what a checkpoint or a data batch from outside may hide.
Each one, if it ran, would leave a file at ``path``; the loaders must refuse them first."""

import os


class OpensAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsAShellCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


HOSTILE = [OpensAFile, RunsAShellCommand]
