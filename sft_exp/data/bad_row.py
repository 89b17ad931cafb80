"""`BadRow`: a row that cannot be used, with the reason it is counted under (dropped rows are counted)."""


class BadRow(Exception):
    """A row that cannot be used; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
