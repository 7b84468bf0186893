"""Errors raised for bad input, each a one-line message naming the file and the fix."""


class InputError(ValueError):
    """An input cannot be used; the message names the file and how to fix it."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")
