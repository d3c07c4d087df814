"""Processor factories: what they return is the scope."""
from webpy_txscope import txscope


def make_scope(uri):
    return txscope(uri, retries=2)


def make_logged_scope(uri):
    scope = txscope(uri)
    return scope
