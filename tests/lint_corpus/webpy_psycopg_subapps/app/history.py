"""A revision store: its commit() records a revision, not a database transaction
(the shape of mizuy/mizwiki's svnrep.py)."""


class Revisions:
    def __init__(self, store):
        self.store = store

    def save(self, path, text):
        try:
            self.store.add(path, text)
        except Exception:
            self.store.commit(message="partial save")
            raise
        finally:
            self.store.commit(message=f"save {path}")
