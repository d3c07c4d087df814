"""The cookbook's model: the recipe's ``User``, with salted password hashes.

Run ``python models.py [URI]`` to create the table and fill it with sample
users (SQLite file ``mydatabase.db`` in the working directory by default, or
``$TXSCOPE_DATABASE_URI``).
"""

import hashlib
import hmac
import os
import random
import string
import sys

from sqlobject import SQLObject, StringCol

DATABASE_URI = os.environ.get("TXSCOPE_DATABASE_URI") or "sqlite:" + os.path.abspath("mydatabase.db")

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


class User(SQLObject):
    class sqlmeta:
        table = "users"  # `user` is a reserved word in PostgreSQL

    name = StringCol(length=40, alternateID=True)
    fullname = StringCol(length=200)
    password = StringCol(length=200)  # "scrypt$<salt hex>$<hash hex>", never the password


def hash_password(password: str) -> str:
    """A salted scrypt hash of *password*, safe to store."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$%s$%s" % (salt.hex(), digest.hex())


def check_password(stored: str, password: str) -> bool:
    """True if *password* matches the hash *stored* by :func:`hash_password`."""
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(candidate.hex(), digest)


def create_tables(connection) -> None:
    """Create the cookbook's table on *connection* if it is missing."""
    User.createTable(ifNotExists=True, connection=connection)


def sample_users(count: int = 10):
    """Made-up users, as in the recipe's example session."""
    rng = random.Random(542)
    for _ in range(count):
        name = "".join(rng.choice(string.ascii_letters) for _ in range(4))
        surname = "".join(rng.choice(string.ascii_letters) for _ in range(7))
        yield name, "%s %s" % (name, surname)


def main(argv=None) -> None:
    from webpy_txscope import txscope

    argv = sys.argv[1:] if argv is None else argv
    scope = txscope(argv[0] if argv else DATABASE_URI)
    create_tables(scope.connection)
    with scope.transaction():
        password = hash_password("542")
        for name, fullname in sample_users():
            if not User.selectBy(name=name).count():
                User(name=name, fullname=fullname, password=password)
        print("%d users in %s" % (User.select().count(), scope.manager.name))


if __name__ == "__main__":
    main()
